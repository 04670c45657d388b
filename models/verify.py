"""Checks the committed models against their reference files and model cards
with onnxruntime, plus the helper scripts. Run after a rebuild, or in CI:

    .venv/bin/python models/verify.py        # or: models/build.sh (rebuild + verify)

Ends with `models: N passed, N failed`; exits 1 if anything failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

MAX_COMMITTED_BYTES = 2 * 1024 * 1024
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def io_signature(path: Path):
    m = onnx.load(str(path))

    def sig(vi):
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        return vi.name, vi.type.tensor_type.elem_type, dims

    return m, [sig(i) for i in m.graph.input], [sig(o) for o in m.graph.output]


def check_committed_model(path: Path, inputs, outputs):
    assert path.stat().st_size <= MAX_COMMITTED_BYTES, f"{path.name} is over 2 MB"
    m, ins, outs = io_signature(path)
    onnx.checker.check_model(m, full_check=True)
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [common.OPSET], m.opset_import
    assert ins == inputs, f"inputs {ins} != {inputs}"
    assert outs == outputs, f"outputs {outs} != {outputs}"


def load_ref(name: str):
    ref = json.loads((HERE / name / "reference.json").read_text())
    model = HERE / name / ref["model"]
    assert common.sha256_of(model) == ref["model_sha256"], f"{name}/reference.json was made from another model file"
    card = (HERE / name / "MODEL_CARD.md").read_text()
    assert ref["model_sha256"] in card, f"{name}/MODEL_CARD.md names another model file"
    return ref, model


F = onnx.TensorProto.FLOAT


@check
def digits_interface():
    check_committed_model(
        HERE / "digits" / "digits.onnx",
        [("input", F, ["N", 1, 8, 8])],
        [("logits", F, ["N", 10]), ("probabilities", F, ["N", 10])],
    )


@check
def digits_reference_reproduces():
    ref, model = load_ref("digits")
    sess = common.session(model)
    tol = ref["tolerance"]
    assert len(ref["cases"]) == 360
    worst = 0.0
    for c in ref["cases"]:
        x = np.array(c["input"], np.float32).reshape(1, 1, 8, 8)
        lo, pr = sess.run(["logits", "probabilities"], {"input": x})
        worst = max(worst, float(np.abs(lo[0] - c["logits"]).max()), float(np.abs(pr[0] - c["probabilities"]).max()))
        assert int(lo[0].argmax()) == c["class"], f"case {c['index']}: class changed"
    assert worst <= tol, f"outputs moved by {worst}"


@check
def digits_accuracy():
    ref, _ = load_ref("digits")
    acc = np.mean([c["class"] == c["label"] for c in ref["cases"]])
    assert acc >= 0.97, f"test accuracy {acc}"
    assert abs(acc - ref["test_accuracy"]) < 1e-9
    assert f"{acc * 100:.2f} %" in (HERE / "digits" / "MODEL_CARD.md").read_text(), "model card shows another accuracy"


@check
def digits_batch_equals_single():
    ref, model = load_ref("digits")
    x = np.array([c["input"] for c in ref["cases"]], np.float32).reshape(-1, 1, 8, 8)
    lo = common.session(model).run(["logits"], {"input": x})[0]
    assert np.abs(lo - np.array([c["logits"] for c in ref["cases"]])).max() <= 1e-5


@check
def vibration_interface():
    check_committed_model(HERE / "vibration" / "vibration.onnx", [("input", F, ["N", 64])], [("score", F, ["N", 1])])


@check
def vibration_reference_reproduces():
    ref, model = load_ref("vibration")
    sess = common.session(model)
    thr = ref["threshold"]
    assert thr == 0.8
    kinds = {c["kind"] for c in ref["cases"]}
    assert kinds == {"normal", "bearing_fault", "frequency_shift", "amplitude_burst", "imbalance"}, kinds
    for c in ref["cases"]:
        s = sess.run(["score"], {"input": np.array([c["input"]], np.float32)})[0][0]
        assert abs(float(s[0]) - c["score"][0]) <= ref["tolerance"], f"case {c['index']}"
        assert bool(s[0] > thr) == c["anomaly"], f"case {c['index']}: flag changed"
        assert abs(c["score"][0] - thr) >= 1e-3, f"case {c['index']} too close to the threshold"


@check
def vibration_flags_anomalies_not_normal():
    ref, _ = load_ref("vibration")
    normal = [c["anomaly"] for c in ref["cases"] if c["kind"] == "normal"]
    anomalous = [c["anomaly"] for c in ref["cases"] if c["kind"] != "normal"]
    assert np.mean(normal) <= 0.02, f"{np.mean(normal):.1%} of normal reference windows flagged"
    assert np.mean(anomalous) >= 0.9, f"only {np.mean(anomalous):.1%} of anomalous reference windows flagged"


@check
def vibration_samples_match_model():
    samples = json.loads((HERE / "vibration" / "samples.json").read_text())
    sess = common.session(HERE / "vibration" / samples["model"])
    kinds = set()
    for r in samples["readings"]:
        inp = r["payload"]["inputs"][0]
        assert (inp["name"], inp["shape"], inp["datatype"]) == ("input", [1, 64], "FP32")
        s = float(sess.run(["score"], {"input": np.array(inp["data"], np.float32).reshape(1, 64)})[0][0, 0])
        assert abs(s - r["score"]) <= 1e-4
        assert r["anomaly"] == (s > 0.8) == (r["kind"] != "normal"), f"reading {r['seq']} ({r['kind']}) score {s}"
        kinds.add(r["kind"])
    assert len(kinds) == 5, kinds


@check
def simulate_is_deterministic():
    cmd = [sys.executable, str(HERE / "vibration" / "simulate.py"), "--count", "6", "--anomaly-every", "3", "--seed", "5"]
    a = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    b = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert a == b
    lines = [json.loads(l) for l in a.splitlines()]
    assert len(lines) == 6 and all(len(l["inputs"][0]["data"]) == 64 for l in lines)


@check
def bench_ort_matches_direct_run():
    model = HERE / "digits" / "digits.onnx"
    out = subprocess.run(
        [sys.executable, str(HERE / "bench_ort.py"), str(model), "--iters", "5", "--warmup", "1", "--full"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rep = json.loads(out)
    assert rep["input"]["shape"] == [1, 1, 8, 8] and rep["threads"] == {"intra_op": 1, "inter_op": 1}
    assert 0 < rep["latency_us"]["p50"] <= rep["latency_us"]["p99"]
    sys.path.insert(0, str(HERE))
    import bench_ort

    x = bench_ort.weyl_input([1, 1, 8, 8], "float32", 0, 0.0, 1.0)
    # The documented test vector of weyl-v1 (seed 0, range [0, 1)).
    assert x.reshape(-1)[:3].tolist() == [0.6180339455604553, 0.23606795072555542, 0.8541019558906555]
    lo = common.session(model).run(["logits"], {"input": x})[0]
    assert np.array_equal(np.array(rep["outputs"][0]["values"], np.float32), lo.reshape(-1))


@check
def mobilenetv2_generated():
    path = HERE / "mobilenetv2" / "mobilenetv2.onnx"
    if not path.exists():
        raise Skip(f"{path} not generated (models/build.sh generates it)")
    _, ins, outs = io_signature(path)
    assert ins == [("input", F, [1, 3, 224, 224])], ins
    assert outs == [("logits", F, [1, 1000])], outs


class Skip(Exception):
    pass


def main() -> int:
    passed = failed = skipped = 0
    for fn in CHECKS:
        try:
            fn()
        except Skip as e:
            skipped += 1
            print(f"SKIP {fn.__name__}: {e}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print(f"ok   {fn.__name__}")
    print(f"models: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
