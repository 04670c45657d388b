"""Per-node profile of one ONNX model under onnxruntime (CPU, 1 intra-op and
1 inter-op thread, sequential, all graph optimisations), and the kind of
every node of the graph, for the per-op comparison with tract in
tests/src/bin/bench-kserve.rs.

    python models/profile_ort.py MODEL.onnx [--iters 30] [--warmup 5] [--batch 1]

Prints one JSON document: version, iterations, `nodes` (every graph node:
name, op_type, kind, `desc` (a conv's weights, output and stride), `conv` (a conv's output channels,
output side and stride, as numbers), and `after`, the kind of the node its first input comes
from, and `macs`, the multiply-adds of a Conv or Gemm at batch 1) `ort_us` (microseconds per run by kind) and `ort_node_us` (by graph node). Kinds:
"depthwise conv" (Conv with group = input channels), "pointwise conv" (1x1
Conv), "full conv" (any other Conv), then the op type for everything else.
onnxruntime fuses nodes (Conv + Clip, in its blocked NCHWc layout); a
fused node's time goes to the graph node of the same op type whose name is
the longest prefix of its name, so a conv's activation is counted with the
conv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def kinds(model: onnx.ModelProto) -> list[dict]:
    weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    shapes = {}
    for v in onnx.shape_inference.infer_shapes(model).graph.value_info:
        shapes[v.name] = [d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]
    for v in model.graph.output:
        shapes[v.name] = [d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]
    out = []
    for n in model.graph.node:
        kind = n.op_type
        if n.op_type == "Conv":
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            shape = weights.get(n.input[1])
            if shape is not None and group > 1 and shape[1] == 1:
                kind = "depthwise conv"
            elif shape is not None and tuple(shape[2:]) == (1, 1):
                kind = "pointwise conv"
            else:
                kind = "full conv"
        # Multiply-adds of a conv or Gemm at batch 1: output elements times
        # the weights each one reads.
        macs = 0
        w = weights.get(n.input[1]) if len(n.input) > 1 else None
        desc, conv = "", None
        if n.op_type == "Conv" and w is not None and n.output[0] in shapes:
            macs = int(np.prod(shapes[n.output[0]])) * int(np.prod(w[1:]))
            stride = next((list(a.ints) for a in n.attribute if a.name == "strides"), [1, 1])
            o = shapes[n.output[0]]
            desc = f"{w[0]}x{w[1]}x{w[2]}x{w[3]} -> {o[1]}x{o[2]}x{o[3]}, stride {stride[0]}"
            conv = {"channels": o[1], "out": o[2], "stride": stride[0]}
        elif n.op_type == "Gemm" and w is not None:
            macs = int(np.prod(w))
        out.append({"name": n.name, "op_type": n.op_type, "kind": kind, "macs": macs, "desc": desc, "conv": conv, "input": n.input[0] if n.input else ""})
    # `after`: the kind of the node whose output this one takes first (a
    # Clip or residual Add after a conv), for runtimes that fuse the two
    # and name the result after the second.
    producer = {o: entry for n, entry in zip(model.graph.node, out) for o in n.output}
    for entry in out:
        entry["after"] = producer[entry["input"]]["kind"] if entry["input"] in producer else ""
        del entry["input"]
    return out


def owner(name: str, op: str | None, nodes: list[dict]) -> dict | None:
    """The graph node an onnxruntime node came from: the longest name that
    prefixes its name, of the same op type when there is one (a fused
    Conv + Clip is named after the Clip, "conv1.relu6_nchwc")."""
    best = None
    for same_op in (True, False):
        for n in nodes:
            if same_op and n["op_type"] != op:
                continue
            if n["name"] and name.startswith(n["name"]) and (best is None or len(n["name"]) > len(best["name"])):
                best = n
        if best is not None:
            return best
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="size of a symbolic first dimension")
    args = ap.parse_args()

    model = onnx.load(args.model)
    nodes = kinds(model)
    inp = model.graph.input[0]
    shape = [d.dim_value if d.dim_value > 0 else args.batch for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    warm = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    for _ in range(args.warmup):
        warm.run(None, {inp.name: x})
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
        for _ in range(args.warmup):
            sess.run(None, {inp.name: x})
        for _ in range(args.iters):
            sess.run(None, {inp.name: x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    # Only the timed runs: the last `iters` of the model_run events.
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    timed = runs[-args.iters :]
    start = timed[0]["ts"] if timed else 0
    per_kind: dict[str, float] = {}
    per_node: dict[str, float] = {}
    total = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < start:
            continue
        name = e["name"][: -len("_kernel_time")]
        n = owner(name, e.get("args", {}).get("op_name"), nodes)
        kind = n["kind"] if n else e.get("args", {}).get("op_name", "?")
        per_kind[kind] = per_kind.get(kind, 0.0) + e["dur"]
        if n:
            per_node[n["name"]] = per_node.get(n["name"], 0.0) + e["dur"]
        total += e["dur"]
    model_run = sum(r["dur"] for r in timed) / max(len(timed), 1)
    print(
        json.dumps(
            {
                "version": ort.__version__,
                "iterations": args.iters,
                "nodes": nodes,
                "ort_us": {k: v / args.iters for k, v in per_kind.items()},
                "ort_node_us": {k: v / args.iters for k, v in per_node.items()},
                "ort_nodes_us": total / args.iters,
                "ort_run_us": model_run,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
