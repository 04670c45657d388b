"""Trains the vibration autoencoder on normal windows from generator.py, with
numpy; exports it to ONNX with the anomaly score computed in the graph
(output `score`); calibrates the score so that `score > 0.8` is the alarm;
measures the false-positive rate on held-out normal windows and the detection
rate on held-out anomalies; writes reference.json, samples.json and the model
card.

    python models/vibration/train.py

Deterministic (fixed data and training seeds). See generator.py for the signals.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from onnx import helper
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import generator as gen  # noqa: E402

# Seeds of the data splits: disjoint streams, so no window is shared.
SEED_TRAIN, SEED_CALIB, SEED_TEST_NORMAL, SEED_TEST_ANOMALY, SEED_INIT = 101, 202, 303, 404, 505
SEED_SAMPLES = 606
N_TRAIN, N_CALIB, N_TEST_NORMAL, N_TEST_PER_KIND = 8000, 4000, 4000, 500
H, Z = 64, 16
EPOCHS, BATCH, LR = 100, 64, 2e-3
THRESHOLD = 0.8
# The calibration quantile of normal reconstruction error that maps to THRESHOLD.
CALIB_QUANTILE = 0.999


def init_params(rng):
    def glorot(o, i):
        return (rng.standard_normal((o, i)) * np.sqrt(2.0 / (i + o))).astype(np.float32)

    w = gen.WINDOW
    return {
        "enc1.weight": glorot(H, w),
        "enc1.bias": np.zeros(H, np.float32),
        "enc2.weight": glorot(Z, H),
        "enc2.bias": np.zeros(Z, np.float32),
        "dec1.weight": glorot(H, Z),
        "dec1.bias": np.zeros(H, np.float32),
        "dec2.weight": glorot(w, H),
        "dec2.bias": np.zeros(w, np.float32),
    }


def forward(p, x):
    h1 = np.tanh(x @ p["enc1.weight"].T + p["enc1.bias"])
    z = h1 @ p["enc2.weight"].T + p["enc2.bias"]
    h3 = np.tanh(z @ p["dec1.weight"].T + p["dec1.bias"])
    r = h3 @ p["dec2.weight"].T + p["dec2.bias"]
    return r, (h1, z, h3)


def mse(p, x):
    r, _ = forward(p, x)
    return ((r - x) ** 2).mean(axis=1)


def loss_and_grads(p, x):
    r, (h1, z, h3) = forward(p, x)
    n, w = x.shape
    d = r - x
    loss = float((d**2).mean())
    dr = 2 * d / (n * w)
    g = {"dec2.weight": dr.T @ h3, "dec2.bias": dr.sum(0)}
    dh3 = dr @ p["dec2.weight"] * (1 - h3**2)
    g["dec1.weight"], g["dec1.bias"] = dh3.T @ z, dh3.sum(0)
    dz = dh3 @ p["dec1.weight"]
    g["enc2.weight"], g["enc2.bias"] = dz.T @ h1, dz.sum(0)
    dh1 = dz @ p["enc2.weight"] * (1 - h1**2)
    g["enc1.weight"], g["enc1.bias"] = dh1.T @ x, dh1.sum(0)
    return loss, {k: v.astype(np.float32) for k, v in g.items()}


def train(x, log):
    rng = np.random.default_rng(SEED_INIT)
    p = init_params(rng)
    opt = common.Adam(p, LR)
    steps = int(np.ceil(len(x) / BATCH))
    total = EPOCHS * steps
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        losses = []
        for s in range(steps):
            opt.lr = LR * 0.5 * (1 + np.cos(np.pi * opt.t / total))
            loss, g = loss_and_grads(p, x[order[s * BATCH : (s + 1) * BATCH]])
            opt.step(g)
            losses.append(loss)
        if epoch % 10 == 9:
            log(f"epoch {epoch + 1:3d}  train mse {np.mean(losses):.5f}")
    return p


def export(p, c: float):
    nodes = [
        helper.make_node("Gemm", ["input", "enc1.weight", "enc1.bias"], ["enc1"], transB=1),
        helper.make_node("Tanh", ["enc1"], ["enc1_act"]),
        helper.make_node("Gemm", ["enc1_act", "enc2.weight", "enc2.bias"], ["code"], transB=1),
        helper.make_node("Gemm", ["code", "dec1.weight", "dec1.bias"], ["dec1"], transB=1),
        helper.make_node("Tanh", ["dec1"], ["dec1_act"]),
        helper.make_node("Gemm", ["dec1_act", "dec2.weight", "dec2.bias"], ["reconstruction"], transB=1),
        helper.make_node("Sub", ["reconstruction", "input"], ["residual"]),
        helper.make_node("Mul", ["residual", "residual"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["mse"], axes=[1], keepdims=1),
        helper.make_node("Add", ["mse", "score_c"], ["mse_plus_c"]),
        helper.make_node("Div", ["mse", "mse_plus_c"], ["score"]),
    ]
    inits = [common.initializer(k, v) for k, v in p.items()]
    inits.append(common.initializer("score_c", np.array([c], np.float32)))
    graph = helper.make_graph(
        nodes,
        "vibration_autoencoder",
        inputs=[common.value_info("input", ["N", gen.WINDOW])],
        outputs=[common.value_info("score", ["N", 1])],
        initializer=inits,
    )
    return common.make_model(
        graph,
        "Vibration anomaly autoencoder. input: 64 accelerometer samples (g) at 1024 Hz. "
        "score = mse / (mse + c) in [0, 1); score > 0.8 means anomaly.",
        {"threshold": "score > 0.8", "window": str(gen.WINDOW), "sample_rate_hz": str(int(gen.FS)), "score_c": repr(c)},
    )


MODEL_CARD = """# vibration-ae: vibration anomaly autoencoder

A dense autoencoder trained here, with numpy, on normal windows of a seeded
vibration generator; the anomaly score is computed inside the ONNX graph, so
the agent's deployment only needs `when: "score > {threshold}"`.

## Interface
| | name | dtype | shape | meaning |
|---|---|---|---|---|
| input | `input` | float32 | `[N, {w}]` | one window of {w} raw accelerometer samples in g, {fs} Hz (62.5 ms), oldest first; **no preprocessing** |
| output | `score` | float32 | `[N, 1]` | anomaly score in [0, 1): **`score > {threshold}` means anomaly** |

`N` is a symbolic batch dimension; pin it for tract, e.g.
`model.with_input_fact(0, f32::fact([1, {w}]).into())`.
ONNX opset {opset}, IR version {ir}; operators: Gemm, Tanh, Sub, Mul, ReduceMean, Add, Div.

The score: `e = mean((reconstruction - input)^2)` over the {w} samples, then
`score = e / (e + c)` with `c = {c:.6g}`. So `score > {threshold}` is `e > {k:g} c = {ethr:.6g}`,
which is the {q_pct:g}th percentile of `e` on {n_calib} calibration windows of normal data.
The score rises monotonically with the error and saturates towards 1.

## Generator (`generator.py`, seeded)
{generator_doc}
## Architecture and training
`Gemm {w}->{h} -> Tanh -> Gemm {h}->{z} (code) -> Gemm {z}->{h} -> Tanh -> Gemm {h}->{w} (reconstruction)`,
then the score nodes; {params} parameters. Trained on {n_train} normal windows (seed {s_train}),
{epochs} epochs of Adam (lr {lr}, cosine decay, batch {batch}) on mean squared reconstruction
error; init seed {s_init}. Plain numpy, about 10 s on one core.

## Results (held-out data, onnxruntime {ort_version})
Calibration ({n_calib} normal windows, seed {s_calib}) only sets `c`; the figures below are on
windows never used for training or calibration.

| held-out set | windows | flagged (`score > {threshold}`) |
|---|---|---|
| normal (seed {s_tn}) | {n_tn} | **false-positive rate {fpr_pct:.2f} %** ({fp} windows) |
{anomaly_rows}| all anomalies (seed {s_ta}) | {n_ta} | **detection rate {det_pct:.2f} %** |

ROC AUC of the score, normal vs all anomalies: {auc:.4f}. Median score: normal {med_n:.3f},
anomalies {med_a:.3f}. Max \\|onnxruntime - numpy\\| on the scores: {max_diff:.1e}.

## Files
| file | what | size |
|---|---|---|
| `vibration.onnx` | the model | {onnx_size} |
| `reference.json` | {n_ref} held-out windows ({n_ref_n} normal, {n_ref_k} of each anomaly kind) with onnxruntime's scores | {ref_size} |
| `samples.json` | a short stream of readings for demos: normal windows and one burst of every anomaly kind, each with a ready-to-publish payload | {samples_size} |
| `generator.py` | the signal generator | |
| `simulate.py` | prints readings (JSON lines) for `mosquitto_pub -l` | |
| `train.py` | trains, calibrates, exports, verifies, writes this card | |

`vibration.onnx` sha256: `{sha}`

`reference.json`: `model`, `model_sha256`, `input_name`, `input_shape_per_item` ([{w}]),
`output_names` (["score"]), `threshold`, `tolerance` (1e-4), and `cases`: a list of
`{{"index", "kind" ("normal" or an anomaly kind), "input" [{w}], "score" [1], "anomaly" (score > {threshold})}}`
from onnxruntime (1 thread, batch 1). Floats parse back to the exact float32 values.
No reference case has a score within {margin:.0e} of the threshold, so the anomaly flag is
stable across runtimes.

## Rebuild
`models/build.sh`, or only this one: `.venv/bin/python models/vibration/train.py`.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=HERE)
    out = ap.parse_args().out_dir
    log = lambda m: print(f"[vibration] {m}", flush=True)  # noqa: E731

    x_train = gen.normal_set(SEED_TRAIN, N_TRAIN)
    x_calib = gen.normal_set(SEED_CALIB, N_CALIB)
    x_tn = gen.normal_set(SEED_TEST_NORMAL, N_TEST_NORMAL)
    x_ta, kinds_ta = gen.anomaly_set(SEED_TEST_ANOMALY, N_TEST_PER_KIND)
    kinds_ta = np.array(kinds_ta)

    t0 = time.time()
    p = train(x_train, log)
    log(f"trained in {time.time() - t0:.1f} s")

    e_calib = mse(p, x_calib)
    e_thr = float(np.quantile(e_calib, CALIB_QUANTILE))
    k = THRESHOLD / (1 - THRESHOLD)  # score > T  <=>  e > k c
    c = float(np.float32(e_thr / k))
    model_path = out / "vibration.onnx"
    common.save_model(export(p, c), model_path)

    sess = common.session(model_path)
    s_tn = sess.run(["score"], {"input": x_tn})[0][:, 0]
    s_ta = sess.run(["score"], {"input": x_ta})[0][:, 0]
    np_scores = (lambda e: e / (e + c))(mse(p, x_tn))
    max_diff = float(np.abs(np_scores - s_tn).max())
    if max_diff > 1e-5:
        raise SystemExit(f"onnxruntime and numpy disagree: max diff {max_diff}")
    fp = int((s_tn > THRESHOLD).sum())
    fpr = fp / len(s_tn)
    det = float((s_ta > THRESHOLD).mean())
    auc = float(roc_auc_score(np.r_[np.zeros(len(s_tn)), np.ones(len(s_ta))], np.r_[s_tn, s_ta]))
    per_kind = {kd: float((s_ta[kinds_ta == kd] > THRESHOLD).mean()) for kd in gen.ANOMALY_KINDS}
    log(f"c={c:.6g}  FPR {fpr * 100:.2f}%  detection {det * 100:.2f}%  AUC {auc:.4f}  ort-vs-numpy {max_diff:.1e}")
    for kd, r in per_kind.items():
        log(f"  {kd:16s} detected {r * 100:.1f}%")

    # Reference cases: the first held-out windows of each kind, run one at a time.
    margin = 1e-3
    n_ref_n, n_ref_k = 100, 25
    picked = [("normal", x) for x in x_tn[:n_ref_n]]
    for kd in gen.ANOMALY_KINDS:
        picked += [(kd, x) for x in x_ta[kinds_ta == kd][:n_ref_k]]
    cases = []
    for i, (kd, x) in enumerate(picked):
        s = sess.run(["score"], {"input": x[None, :]})[0][0]
        if abs(float(s[0]) - THRESHOLD) < margin:
            continue  # too close to the threshold to demand the same flag from every runtime
        cases.append(
            {"index": i, "kind": kd, "input": common.f32_list(x), "score": common.f32_list(s), "anomaly": bool(s[0] > THRESHOLD)}
        )
    sha = common.sha256_of(model_path)
    ref_path = out / "reference.json"
    common.write_json(
        ref_path,
        {
            "model": "vibration.onnx",
            "model_sha256": sha,
            "input_name": "input",
            "input_shape_per_item": [gen.WINDOW],
            "output_names": ["score"],
            "threshold": THRESHOLD,
            "tolerance": 1e-4,
            "cases": cases,
        },
    )

    samples_path = out / "samples.json"
    write_samples(samples_path, sess)

    import onnxruntime

    anomaly_rows = "".join(
        f"| {kd} (seed {SEED_TEST_ANOMALY}) | {N_TEST_PER_KIND} | detection rate {r * 100:.1f} % |\n" for kd, r in per_kind.items()
    )
    card = MODEL_CARD.format(
        threshold=THRESHOLD,
        w=gen.WINDOW,
        fs=int(gen.FS),
        opset=common.OPSET,
        ir=common.IR_VERSION,
        c=c,
        k=k,
        ethr=e_thr,
        q_pct=CALIB_QUANTILE * 100,
        n_calib=N_CALIB,
        generator_doc=gen.__doc__.split("\n\n", 1)[1].rsplit("\n\nEverything", 1)[0].join(["```\n", "\n```\n"]),
        h=H,
        z=Z,
        params=sum(v.size for v in p.values()) + 1,
        n_train=N_TRAIN,
        s_train=SEED_TRAIN,
        epochs=EPOCHS,
        lr=LR,
        batch=BATCH,
        s_init=SEED_INIT,
        ort_version=onnxruntime.__version__,
        s_calib=SEED_CALIB,
        s_tn=SEED_TEST_NORMAL,
        n_tn=N_TEST_NORMAL,
        fpr_pct=fpr * 100,
        fp=fp,
        anomaly_rows=anomaly_rows,
        s_ta=SEED_TEST_ANOMALY,
        n_ta=len(x_ta),
        det_pct=det * 100,
        auc=auc,
        med_n=float(np.median(s_tn)),
        med_a=float(np.median(s_ta)),
        max_diff=max_diff,
        onnx_size=common.file_size_text(model_path),
        n_ref=len(cases),
        n_ref_n=n_ref_n,
        n_ref_k=n_ref_k,
        ref_size=common.file_size_text(ref_path),
        samples_size=common.file_size_text(samples_path),
        sha=sha,
        margin=margin,
    )
    (out / "MODEL_CARD.md").write_text(card)
    log(f"wrote {model_path} ({common.file_size_text(model_path)}), {ref_path}, {samples_path}, MODEL_CARD.md")
    return 0


def write_samples(path: Path, sess) -> None:
    """A demo stream: 8 normal windows, then 2 of each anomaly kind, then 4 normal again."""
    import simulate

    rng = np.random.default_rng(SEED_SAMPLES)
    plan = ["normal"] * 8 + [k for k in gen.ANOMALY_KINDS for _ in range(2)] + ["normal"] * 4
    readings = []
    for seq, kind in enumerate(plan):
        x = gen.normal_window(rng) if kind == "normal" else gen.anomaly_window(rng, kind)
        score = float(sess.run(["score"], {"input": x[None, :]})[0][0, 0])
        readings.append(
            {
                "seq": seq,
                "kind": kind,
                "score": score,
                "anomaly": score > THRESHOLD,
                "payload": simulate.payload(x, "kserve"),
            }
        )
    common.write_json(
        path,
        {
            "description": "Vibration readings for demos/tests: publish each `payload` (a KServe v2 "
            "inference request body) on the input topic; `score` is onnxruntime's output, "
            "`anomaly` is score > 0.8.",
            "model": "vibration.onnx",
            "threshold": THRESHOLD,
            "readings": readings,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
