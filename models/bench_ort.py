"""Benchmarks one ONNX model with onnxruntime (CPU, 1 intra-op thread, 1
inter-op thread, sequential execution, all graph optimisations) on a
deterministic input, and prints one JSON document on stdout. The Rust
benchmark calls it in the same invocation as tract, builds the same input,
and compares latencies and outputs.

    python models/bench_ort.py MODEL.onnx [--shape 1,1,8,8] [--dtype float32]
        [--iters 200] [--warmup 20] [--seed 0] [--range 0,1] [--input-file X.bin] [--full]
        [--samples]

Deterministic input ("weyl-v1"), element i = 0, 1, ... in row-major order,
all integer arithmetic on u64:
    h = ((i + 1) * 2654435761 + seed * 40503) mod 2^32
    u = (h >> 8) as f32 / 16777216.0            # exact: 24-bit integer / 2^24, in [0, 1)
  float32: x = lo + (hi - lo) * u               # f32 ops, multiply then add (no fused multiply-add)
  float64: the same formula in f64 (u as f64, lo and hi as f64)
  integer dtypes: x = lo + ((h >> 8) mod (hi - lo))   (lo, hi integers)
Default range [0, 1) for floats, [0, 10) for integers. --input-file instead
reads raw little-endian bytes of exactly the given shape and dtype.

Latency: each of --iters timed runs measures one `session.run` (all outputs)
with time.perf_counter_ns, after --warmup untimed runs. Percentiles use the
nearest-rank method: p-th = sorted[ceil(p / 100 * n) - 1].

Output JSON: runtime, version, model, model_sha256, threads, input {name,
shape, dtype, source}, iterations, warmup, latency_us {p50, p99, min, max,
mean}, outputs [{name, shape, dtype, sum, abs_sum, first (first 16 values),
values (all, only with --full)}], samples_us (every timed run in order, only
with --samples). Sums are computed in f64 over the float32
(or other) outputs in row-major order.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "uint8": np.uint8,
    "int8": np.int8,
}
ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}


def weyl_input(shape: list[int], dtype: str, seed: int, lo: float, hi: float) -> np.ndarray:
    n = int(np.prod(shape))
    i = np.arange(1, n + 1, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(seed * 40503)) & np.uint64(0xFFFFFFFF)
    top = (h >> np.uint64(8)).astype(np.int64)
    if dtype == "float32":
        u = top.astype(np.float32) / np.float32(16777216.0)
        x = np.float32(lo) + (np.float32(hi) - np.float32(lo)) * u
    elif dtype == "float64":
        x = float(lo) + (float(hi) - float(lo)) * (top.astype(np.float64) / 16777216.0)
    else:
        ilo, ihi = int(lo), int(hi)
        if ihi <= ilo:
            raise SystemExit("--range: hi must be greater than lo")
        x = ilo + top % (ihi - ilo)
    return np.asarray(x, dtype=DTYPES[dtype]).reshape(shape)


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--shape", help="input shape, e.g. 1,1,8,8 (default: the model's, symbolic dims as 1)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="input dtype (default: the model's)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--range", dest="range_", help="lo,hi of generated inputs (default 0,1; ints 0,10)")
    ap.add_argument("--input-file", type=Path, help="raw little-endian input tensor instead of generated values")
    ap.add_argument("--full", action="store_true", help="include every output value")
    ap.add_argument("--samples", action="store_true", help="include every timed latency (samples_us)")
    args = ap.parse_args()
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    if not args.model.is_file():
        ap.error(f"no such model file: {args.model}")

    sess = common.session(args.model)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        ap.error(f"the model has {len(inputs)} inputs; only single-input models are supported")
    inp = inputs[0]
    dtype = args.dtype or ORT_TYPES.get(inp.type)
    if dtype is None:
        ap.error(f"input type {inp.type} is not supported; pass --dtype")
    if args.shape:
        try:
            shape = [int(d) for d in args.shape.split(",")]
        except ValueError:
            ap.error(f"--shape: expected comma-separated integers, got {args.shape!r}")
    else:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]

    if args.input_file:
        raw = args.input_file.read_bytes()
        want = int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize
        if len(raw) != want:
            ap.error(f"--input-file has {len(raw)} bytes; shape {shape} of {dtype} needs {want}")
        x = np.frombuffer(raw, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<")).astype(DTYPES[dtype]).reshape(shape)
        source = f"file:{args.input_file}"
    else:
        is_float = dtype.startswith("float")
        lo, hi = (0.0, 1.0) if is_float else (0, 10)
        if args.range_:
            try:
                lo, hi = (float(v) for v in args.range_.split(","))
            except ValueError:
                ap.error(f"--range: expected lo,hi, got {args.range_!r}")
        x = weyl_input(shape, dtype, args.seed, lo, hi)
        source = f"weyl-v1 seed={args.seed} range=[{lo:g},{hi:g})"

    feed = {inp.name: x}
    try:
        for _ in range(args.warmup):
            sess.run(None, feed)
        times_us = []
        outs = None
        for _ in range(args.iters):
            t0 = time.perf_counter_ns()
            outs = sess.run(None, feed)
            times_us.append((time.perf_counter_ns() - t0) / 1000.0)
    except Exception as e:  # onnxruntime raises its own exception types for shape/type errors
        print(f"onnxruntime failed on input {inp.name} {shape} {dtype}: {e}", file=sys.stderr)
        return 1

    s = sorted(times_us)
    outputs = []
    for meta, o in zip(sess.get_outputs(), outs):
        o = np.asarray(o)
        entry = {
            "name": meta.name,
            "shape": list(o.shape),
            "dtype": str(o.dtype),
            "sum": float(o.astype(np.float64).sum()),
            "abs_sum": float(np.abs(o.astype(np.float64)).sum()),
            "first": o.reshape(-1)[:16].astype(np.float64).tolist(),
        }
        if args.full:
            entry["values"] = o.reshape(-1).astype(np.float64).tolist()
        outputs.append(entry)

    import onnxruntime

    report = {
        "runtime": "onnxruntime",
        "version": onnxruntime.__version__,
        "model": str(args.model),
        "model_sha256": common.sha256_of(args.model),
        "threads": {"intra_op": 1, "inter_op": 1},
        "input": {"name": inp.name, "shape": shape, "dtype": dtype, "source": source},
        "iterations": args.iters,
        "warmup": args.warmup,
        "latency_us": {
            "p50": percentile(s, 50),
            "p99": percentile(s, 99),
            "min": s[0],
            "max": s[-1],
            "mean": sum(s) / len(s),
        },
        "outputs": outputs,
    }
    if args.samples:
        report["samples_us"] = times_us
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
