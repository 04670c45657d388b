"""Prints simulated vibration sensor readings, one JSON document per line, for
demos and tests that publish them on the device-local MQTT broker:

    python models/vibration/simulate.py --count 20 --anomaly-every 5 \
        | mosquitto_pub -h 127.0.0.1 -t sensors/vibration -l

Each line is one window of 64 samples (g, 1024 Hz) from generator.py. Formats:
  kserve  {"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[...64 floats]}]}
          (a KServe v2 inference request body; the default)
  tensor  {"input":[[...64 floats]]}   (input name -> nested array)
  raw     [...64 floats]
With --annotate, each line is {"kind": ..., "payload": <one of the above>} instead.

Only numpy is needed (no onnxruntime). Same --seed, same readings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generator as gen  # noqa: E402

FORMATS = ("kserve", "tensor", "raw")


def payload(x: np.ndarray, fmt: str):
    data = np.asarray(x, dtype=np.float32).astype(np.float64).tolist()
    if fmt == "kserve":
        return {"inputs": [{"name": "input", "shape": [1, gen.WINDOW], "datatype": "FP32", "data": data}]}
    if fmt == "tensor":
        return {"input": [data]}
    if fmt == "raw":
        return data
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10, help="readings to print (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--anomaly-every", type=int, default=0, metavar="K", help="every K-th reading is an anomaly (0: never; default 0)"
    )
    ap.add_argument("--kind", choices=gen.ANOMALY_KINDS, help="anomaly kind (default: cycle through all kinds)")
    ap.add_argument("--format", choices=FORMATS, default="kserve")
    ap.add_argument("--annotate", action="store_true", help="wrap each line as {kind, payload}")
    args = ap.parse_args()
    if args.count < 0 or args.anomaly_every < 0:
        ap.error("--count and --anomaly-every must be >= 0")

    rng = np.random.default_rng(args.seed)
    n_anomalies = 0
    for i in range(1, args.count + 1):
        if args.anomaly_every and i % args.anomaly_every == 0:
            kind = args.kind or gen.ANOMALY_KINDS[n_anomalies % len(gen.ANOMALY_KINDS)]
            n_anomalies += 1
            x = gen.anomaly_window(rng, kind)
        else:
            kind = "normal"
            x = gen.normal_window(rng)
        doc = payload(x, args.format)
        if args.annotate:
            doc = {"kind": kind, "payload": doc}
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
