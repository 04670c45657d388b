#!/usr/bin/env python3
"""The agent's KServe v2 endpoint through a client we did not write:
tritonclient[http] (Triton's own Python client), checked against
onnxruntime. Run by tests/tests/kserve_tritonclient.rs against a real
edge-agent; exits non-zero on the first failed check.

  tritonclient_check.py types-model OUT.onnx
      writes the all-datatypes model: one input and one output per KServe
      datatype served (FP16, FP32, FP64, INT8/16/32/64, UINT8, BOOL), each
      [N, 3]; y = x + x for FP32, FP64, INT32, INT64, not x for BOOL, and x
      for the rest (onnxruntime's CPU Add has no kernel for them).
  tritonclient_check.py check --url HOST:PORT --model NAME=PATH [...]
      [--image-model NAME]
      for each model: server and model metadata (dynamic dims as -1),
      readiness, versions, batch-1 JSON and binary requests, batch 4 when
      the batch is dynamic, requested outputs, and a wrong input name
      answered 400 listing the model's inputs; for --image-model, a binary
      [1,3,224,224] request equals the JSON one.
"""

import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

TOL = 1e-4

# onnxruntime type strings and numpy dtypes per KServe datatype.
TYPES = {
    "FP16": ("tensor(float16)", np.float16, TensorProto.FLOAT16),
    "FP32": ("tensor(float)", np.float32, TensorProto.FLOAT),
    "FP64": ("tensor(double)", np.float64, TensorProto.DOUBLE),
    "INT8": ("tensor(int8)", np.int8, TensorProto.INT8),
    "INT16": ("tensor(int16)", np.int16, TensorProto.INT16),
    "INT32": ("tensor(int32)", np.int32, TensorProto.INT32),
    "INT64": ("tensor(int64)", np.int64, TensorProto.INT64),
    "UINT8": ("tensor(uint8)", np.uint8, TensorProto.UINT8),
    "BOOL": ("tensor(bool)", np.bool_, TensorProto.BOOL),
}
# Types whose output is x + x; the others pass through (Identity).
ADDED = {"FP32", "FP64", "INT32", "INT64"}
BY_ORT = {ort_type: name for name, (ort_type, _, _) in TYPES.items()}


def types_model(out: str) -> None:
    inputs, outputs, nodes = [], [], []
    for name, (_, _, proto) in TYPES.items():
        x, y = f"x_{name.lower()}", f"y_{name.lower()}"
        inputs.append(helper.make_tensor_value_info(x, proto, ["N", 3]))
        outputs.append(helper.make_tensor_value_info(y, proto, ["N", 3]))
        if name == "BOOL":
            nodes.append(helper.make_node("Not", [x], [y]))
        elif name in ADDED:
            nodes.append(helper.make_node("Add", [x, x], [y]))
        else:
            # onnxruntime's CPU Add has no kernel for these.
            nodes.append(helper.make_node("Identity", [x], [y]))
    graph = helper.make_graph(nodes, "kserve_types", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


class Failed(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failed(what)


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def served_shape(ort_shape):
    return [d if isinstance(d, int) and d >= 0 else -1 for d in ort_shape]


def sample(rng, datatype, shape):
    dt = TYPES[datatype][1]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if datatype.startswith("FP"):
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    # Halved so that x + x stays in range.
    return rng.integers(max(info.min // 2, -1000), min(info.max // 2, 1000), shape).astype(dt)


def close(what, got, want):
    expect(got.shape == want.shape, f"{what}: shape {got.shape} vs onnxruntime {want.shape}")
    expect(got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs onnxruntime {want.dtype}")
    if got.dtype.kind == "f":
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
        expect(diff <= TOL, f"{what}: max |agent - onnxruntime| = {diff} > {TOL}")
        return diff
    expect(np.array_equal(got, want), f"{what}: differs from onnxruntime")
    return 0.0


def infer(client, name, sess, feeds, binary, outputs=None, version=""):
    inputs = []
    for meta in sess.get_inputs():
        x = feeds[meta.name]
        datatype = BY_ORT[meta.type]
        i = httpclient.InferInput(meta.name, list(x.shape), datatype)
        i.set_data_from_numpy(x, binary_data=binary)
        inputs.append(i)
    names = outputs or [o.name for o in sess.get_outputs()]
    requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    return client.infer(name, inputs, outputs=requested, model_version=version)


def check_model(client, name, path, rng, log):
    sess = session(path)
    meta = client.get_model_metadata(name)
    want_inputs = [
        {"name": i.name, "datatype": BY_ORT[i.type], "shape": served_shape(i.shape)} for i in sess.get_inputs()
    ]
    got_inputs = sorted(meta["inputs"], key=lambda t: t["name"])
    expect(got_inputs == sorted(want_inputs, key=lambda t: t["name"]), f"{name}: inputs {meta['inputs']} vs {want_inputs}")
    want_outputs = {o.name: served_shape(o.shape) for o in sess.get_outputs()}
    got_outputs = {o["name"]: o["shape"] for o in meta["outputs"]}
    expect(got_outputs == want_outputs, f"{name}: outputs {got_outputs} vs {want_outputs}")
    for o in meta["outputs"]:
        want_type = BY_ORT[next(x.type for x in sess.get_outputs() if x.name == o["name"])]
        expect(o["datatype"] == want_type, f"{name}: output {o['name']} datatype {o['datatype']} vs {want_type}")
    expect(client.is_model_ready(name), f"{name}: not ready")
    expect(len(meta["versions"]) == 1, f"{name}: versions {meta['versions']}")
    version = meta["versions"][0]
    expect(client.get_model_metadata(name, model_version=version)["inputs"] == meta["inputs"], f"{name}: versioned metadata")
    expect(client.is_model_ready(name, model_version=version), f"{name}: version {version} not ready")
    try:
        client.get_model_metadata(name, model_version="0" * 64)
        raise Failed(f"{name}: an unknown version was answered")
    except InferenceServerException as e:
        expect(e.status() == "404", f"{name}: unknown version gave {e.status()}: {e.message()}")

    dynamic = any(-1 in i["shape"] for i in want_inputs)
    batches = [1, 4] if dynamic else [1]
    worst = 0.0
    for batch in batches:
        feeds = {}
        for i in sess.get_inputs():
            shape = [batch if d == -1 else d for d in served_shape(i.shape)]
            feeds[i.name] = sample(rng, BY_ORT[i.type], shape)
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        results = {}
        for binary in (False, True):
            res = infer(client, name, sess, feeds, binary, version=version if binary else "")
            got = {n: res.as_numpy(n) for n in want}
            for n in want:
                worst = max(worst, close(f"{name} batch {batch} {'binary' if binary else 'JSON'} {n}", got[n], want[n]))
            results[binary] = got
        for n in want:
            same = np.array_equal(results[False][n], results[True][n])
            expect(same, f"{name} batch {batch} {n}: binary and JSON results differ")
        log(f"{name}: batch {batch} JSON and binary equal onnxruntime (max diff {worst:.2e})")

    outs = [o.name for o in sess.get_outputs()]
    if len(outs) > 1:
        feeds = {
            i.name: sample(rng, BY_ORT[i.type], [1 if d == -1 else d for d in served_shape(i.shape)])
            for i in sess.get_inputs()
        }
        res = infer(client, name, sess, feeds, True, outputs=[outs[-1]])
        got = [o["name"] for o in res.get_response()["outputs"]]
        expect(got == [outs[-1]], f"{name}: asked for output {outs[-1]} only, got {got}")
        log(f"{name}: requested output {outs[-1]} alone")

    # A wrong input name (the model's first output's) is refused, listing
    # what the model takes.
    first = sess.get_inputs()[0]
    x = sample(rng, BY_ORT[first.type], [1 if d == -1 else d for d in served_shape(first.shape)])
    wrong = httpclient.InferInput(outs[0], list(x.shape), BY_ORT[first.type])
    wrong.set_data_from_numpy(x, binary_data=False)
    try:
        client.infer(name, [wrong])
        raise Failed(f"{name}: an input named after output {outs[0]} was answered")
    except InferenceServerException as e:
        msg = e.message() or ""
        expect(e.status() == "400", f"{name}: wrong input name gave status {e.status()}: {msg}")
        for i in sess.get_inputs():
            expect(f"`{i.name}`" in msg, f"{name}: the 400 does not list input {i.name}: {msg}")
        log(f"{name}: wrong input name -> 400 {msg[:120]}")
    return worst


def check_image(client, name, path, rng, log):
    sess = session(path)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    out = sess.get_outputs()[0].name
    want = sess.run([out], {sess.get_inputs()[0].name: x})[0]
    got = {}
    for binary in (False, True):
        res = infer(client, name, sess, {sess.get_inputs()[0].name: x}, binary)
        got[binary] = res.as_numpy(out)
        close(f"{name} [1,3,224,224] {'binary' if binary else 'JSON'}", got[binary], want)
    diff = float(np.max(np.abs(got[True] - got[False])))
    expect(diff <= 1e-6, f"{name}: binary and JSON results differ by {diff}")
    log(f"{name}: binary [1,3,224,224] request equals the JSON one (max diff {diff:.1e})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("types-model")
    t.add_argument("out")
    c = sub.add_parser("check")
    c.add_argument("--url", required=True)
    c.add_argument("--model", action="append", default=[], help="NAME=PATH")
    c.add_argument("--image-model")
    args = ap.parse_args()
    if args.cmd == "types-model":
        types_model(args.out)
        return 0

    def log(msg):
        print(f"tritonclient: {msg}", flush=True)

    client = httpclient.InferenceServerClient(args.url, network_timeout=300.0, connection_timeout=30.0)
    try:
        expect(client.is_server_live(), "server not live")
        expect(client.is_server_ready(), "server not ready")
        server = client.get_server_metadata()
        expect("binary_tensor_data" in server.get("extensions", []), f"server metadata {server}")
        rng = np.random.default_rng(7)
        models = dict(m.split("=", 1) for m in args.model)
        for name, path in models.items():
            check_model(client, name, path, rng, log)
        if args.image_model:
            check_image(client, args.image_model, models[args.image_model], rng, log)
    except (Failed, InferenceServerException) as e:
        print(f"tritonclient: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    log(f"all checks passed on {len(models)} model(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
