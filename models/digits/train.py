"""Trains the digits CNN on scikit-learn's bundled 8x8 digits with numpy,
exports it to ONNX, checks it with onnxruntime, and writes the reference
outputs and the model card.

    python models/digits/train.py            # writes models/digits/{digits.onnx,reference.json,MODEL_CARD.md}

Deterministic: a fixed split seed and a fixed training seed. Rebuilding on a
machine with a different BLAS may change the last bits of the weights; the
committed reference.json always matches the committed digits.onnx because it
is produced from that file by onnxruntime.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from onnx import helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

SPLIT_SEED = 0
TRAIN_SEED = 1
TEST_FRACTION = 0.2
EPOCHS = 40
BATCH = 32
LR = 3e-3
WEIGHT_DECAY = 1e-4
C1, C2 = 16, 32


# ---------------------------------------------------------------- numpy layers


def conv3x3(x, w, b):
    """3x3 convolution, stride 1, zero padding 1. x [B,C,H,W], w [O,C,3,3]."""
    _, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], w.shape[0], h, wd), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            out += np.einsum("bchw,oc->bohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j], optimize=True)
    return out + b[None, :, None, None], xp


def conv3x3_backward(dout, xp, w):
    _, _, h, wd = dout.shape
    dw = np.zeros_like(w)
    dxp = np.zeros_like(xp)
    for i in range(3):
        for j in range(3):
            sl = xp[:, :, i : i + h, j : j + wd]
            dw[:, :, i, j] = np.einsum("bohw,bchw->oc", dout, sl, optimize=True)
            dxp[:, :, i : i + h, j : j + wd] += np.einsum("bohw,oc->bchw", dout, w[:, :, i, j], optimize=True)
    return dxp[:, :, 1:-1, 1:-1], dw, dout.sum(axis=(0, 2, 3))


def maxpool2(x):
    b, c, h, w = x.shape
    r = x.reshape(b, c, h // 2, 2, w // 2, 2)
    out = r.max(axis=(3, 5))
    mask = r == out[:, :, :, None, :, None]
    return out, mask


def maxpool2_backward(dout, mask):
    b, c, h2, _, w2, _ = mask.shape
    d = mask * dout[:, :, :, None, :, None]
    return d.reshape(b, c, h2 * 2, w2 * 2)


def init_params(rng):
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv1.weight": he((C1, 1, 3, 3), 9),
        "conv1.bias": np.zeros(C1, np.float32),
        "conv2.weight": he((C2, C1, 3, 3), C1 * 9),
        "conv2.bias": np.zeros(C2, np.float32),
        "fc.weight": he((10, C2 * 4), C2 * 4),
        "fc.bias": np.zeros(10, np.float32),
    }


def forward(p, x, cache=False):
    z1, xp1 = conv3x3(x, p["conv1.weight"], p["conv1.bias"])
    a1 = np.maximum(z1, 0)
    p1, m1 = maxpool2(a1)
    z2, xp2 = conv3x3(p1, p["conv2.weight"], p["conv2.bias"])
    a2 = np.maximum(z2, 0)
    p2, m2 = maxpool2(a2)
    flat = p2.reshape(len(x), -1)
    logits = flat @ p["fc.weight"].T + p["fc.bias"]
    if not cache:
        return logits
    return logits, (xp1, z1, m1, xp2, z2, m2, p2.shape, flat)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grads(p, x, y):
    logits, (xp1, z1, m1, xp2, z2, m2, p2shape, flat) = forward(p, x, cache=True)
    prob = softmax(logits)
    n = len(x)
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    dlogits = prob
    dlogits[np.arange(n), y] -= 1
    dlogits /= n
    g = {"fc.weight": dlogits.T @ flat, "fc.bias": dlogits.sum(0)}
    dp2 = (dlogits @ p["fc.weight"]).reshape(p2shape)
    dz2 = maxpool2_backward(dp2, m2) * (z2 > 0)
    dp1, g["conv2.weight"], g["conv2.bias"] = conv3x3_backward(dz2, xp2, p["conv2.weight"])
    dz1 = maxpool2_backward(dp1, m1) * (z1 > 0)
    _, g["conv1.weight"], g["conv1.bias"] = conv3x3_backward(dz1, xp1, p["conv1.weight"])
    for k in g:
        if k.endswith("weight"):
            g[k] = g[k] + WEIGHT_DECAY * p[k]
        g[k] = g[k].astype(np.float32)
    return loss, g


def shift_batch(x, rng):
    """Augmentation: shift each image by up to one pixel (zero fill)."""
    out = np.zeros_like(x)
    for k in range(len(x)):
        dy, dx = rng.integers(-1, 2, size=2)
        src = x[k, 0, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
        out[k, 0, max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def train(x_tr, y_tr, log):
    rng = np.random.default_rng(TRAIN_SEED)
    p = init_params(rng)
    opt = common.Adam(p, LR)
    steps_per_epoch = int(np.ceil(len(x_tr) / BATCH))
    total = EPOCHS * steps_per_epoch
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x_tr))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * BATCH : (s + 1) * BATCH]
            xb = shift_batch(x_tr[idx], rng) if epoch < EPOCHS - 5 else x_tr[idx]
            opt.lr = LR * 0.5 * (1 + np.cos(np.pi * opt.t / total))
            loss, g = loss_and_grads(p, xb, y_tr[idx])
            opt.step(g)
            losses.append(loss)
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            acc = (forward(p, x_tr).argmax(1) == y_tr).mean()
            log(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}  train acc {acc:.4f}")
    return p


# ---------------------------------------------------------------- ONNX export


def export(p):
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool2"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        inputs=[common.value_info("input", ["N", 1, 8, 8])],
        outputs=[common.value_info("logits", ["N", 10]), common.value_info("probabilities", ["N", 10])],
        initializer=[common.initializer(k, v) for k, v in p.items()],
    )
    return common.make_model(
        graph,
        "8x8 handwritten digit classifier (scikit-learn digits). input: pixel/16 in [0,1].",
        {
            "input_scale": "pixel values 0..16 divided by 16.0",
            "classes": "0,1,2,3,4,5,6,7,8,9",
            "split_seed": str(SPLIT_SEED),
            "train_seed": str(TRAIN_SEED),
        },
    )


# ---------------------------------------------------------------- main


def load_split():
    """Returns (x_train, x_test, y_train, y_test); x is float32 [N,1,8,8] in [0,1]."""
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)


MODEL_CARD = """# digits: 8x8 handwritten digit CNN

A small convolutional classifier trained here, with numpy, on scikit-learn's
bundled `load_digits` data (1,797 images of 8x8 pixels, 16 grey levels, from
the UCI optical recognition of handwritten digits set). It is the reference
model for tract vs onnxruntime checks: the agent must give the same class as
onnxruntime on every test image.

## Interface
| | name | dtype | shape | meaning |
|---|---|---|---|---|
| input | `input` | float32 | `[N, 1, 8, 8]` | the image, **pixel / 16.0** (sklearn's 0..16 grey levels mapped to [0, 1]; 0 is background) |
| output 0 | `logits` | float32 | `[N, 10]` | unnormalised class scores, index = digit |
| output 1 | `probabilities` | float32 | `[N, 10]` | `Softmax(logits)` along axis 1 |

`N` is a symbolic batch dimension (any N >= 1). tract plans fastest with fixed
shapes: pin it when loading, e.g.
`model.with_input_fact(0, f32::fact([1, 1, 8, 8]).into())`. The predicted
class is `argmax(logits)` (ties never happen on the test set).

ONNX opset {opset}, IR version {ir}; operators: Conv, Relu, MaxPool, Flatten, Gemm, Softmax.

## Architecture
`Conv 3x3 (1->{c1}, pad 1) -> ReLU -> MaxPool 2x2 -> Conv 3x3 ({c1}->{c2}, pad 1) -> ReLU -> MaxPool 2x2
-> Flatten ({flat}) -> Gemm ({flat}->10) = logits -> Softmax = probabilities`; {params} parameters.

## Data and training
- Split: `train_test_split(test_size={test_fraction}, stratify=labels, random_state={split_seed})`:
  {n_train} training images, {n_test} held-out test images (never seen in training).
- Training: {epochs} epochs of Adam (lr {lr}, cosine decay, batch {batch}, L2 {wd}), cross-entropy,
  He-normal init with seed {train_seed}; random one-pixel shifts as augmentation except in the
  last 5 epochs. Plain numpy, about 10 s on one core.

## Results (held-out test split, onnxruntime {ort_version})
| metric | value |
|---|---|
| test accuracy | **{acc_pct:.2f} %** ({correct} / {n_test}) |
| train accuracy | {train_acc_pct:.2f} % |
| per-class test accuracy | {per_class} |
| max \\|onnxruntime - numpy\\| on test logits | {max_diff:.2e} |
| smallest top-1 minus top-2 logit gap on the test set | {margin:.3f} (far above the 1e-4 tolerance, so the class is stable across runtimes) |

## Files
| file | what | size |
|---|---|---|
| `digits.onnx` | the model | {onnx_size} |
| `reference.json` | every test image with its label and onnxruntime's outputs | {ref_size} |
| `train.py` | trains, exports, verifies, writes this card | |

`digits.onnx` sha256: `{sha}`

`reference.json` holds `model`, `model_sha256`, `input_name`, `input_shape_per_item` ([1,8,8]),
`output_names`, `tolerance` (1e-4), and `cases`: a list of
`{{"index", "label", "input" (64 floats, row-major 8x8), "logits" [10], "probabilities" [10], "class"}}`
with outputs from onnxruntime (1 thread, batch 1). Floats are written so that parsing as f64 and
narrowing to f32 gives the exact float32 values. A Rust test runs each `input` reshaped to
`[1,1,8,8]` through tract and checks the same `class` and every output within `tolerance`.

## Rebuild
`models/build.sh` (creates `.venv` from `models/requirements.txt` if missing, then rebuilds all
models), or only this one: `.venv/bin/python models/digits/train.py`.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=HERE)
    args = ap.parse_args()
    out = args.out_dir
    log = lambda m: print(f"[digits] {m}", flush=True)  # noqa: E731

    x_tr, x_te, y_tr, y_te = load_split()
    log(f"train {len(x_tr)}  test {len(x_te)}")
    t0 = time.time()
    p = train(x_tr, y_tr, log)
    log(f"trained in {time.time() - t0:.1f} s")

    model_path = out / "digits.onnx"
    common.save_model(export(p), model_path)

    sess = common.session(model_path)
    logits, probs = sess.run(["logits", "probabilities"], {"input": x_te})
    np_logits = forward(p, x_te)
    max_diff = float(np.abs(logits - np_logits).max())
    if max_diff > 1e-4:
        raise SystemExit(f"onnxruntime and numpy disagree: max diff {max_diff}")
    pred = logits.argmax(1)
    acc = float((pred == y_te).mean())
    train_acc = float((forward(p, x_tr).argmax(1) == y_tr).mean())
    log(f"test accuracy {acc:.4f}  train accuracy {train_acc:.4f}  ort-vs-numpy {max_diff:.2e}")

    # Reference outputs: one image at a time, as the agent will run them.
    cases = []
    for i in range(len(x_te)):
        lo, pr = sess.run(["logits", "probabilities"], {"input": x_te[i : i + 1]})
        cases.append(
            {
                "index": i,
                "label": int(y_te[i]),
                "input": common.f32_list(x_te[i].reshape(-1)),
                "logits": common.f32_list(lo[0]),
                "probabilities": common.f32_list(pr[0]),
                "class": int(lo[0].argmax()),
            }
        )
    batch_vs_single = float(np.abs(np.array([c["logits"] for c in cases]) - logits).max())
    log(f"batch vs single-image max diff {batch_vs_single:.2e}")
    sha = common.sha256_of(model_path)
    ref_path = out / "reference.json"
    common.write_json(
        ref_path,
        {
            "model": "digits.onnx",
            "model_sha256": sha,
            "input_name": "input",
            "input_shape_per_item": [1, 8, 8],
            "input_scale": "pixel / 16.0",
            "output_names": ["logits", "probabilities"],
            "tolerance": 1e-4,
            "test_accuracy": acc,
            "split": {"test_size": TEST_FRACTION, "random_state": SPLIT_SEED, "stratify": True},
            "cases": cases,
        },
    )

    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = float((top2[:, 1] - top2[:, 0]).min())
    per_class = ", ".join(f"{k}: {(pred[y_te == k] == k).mean() * 100:.0f}%" for k in range(10))
    import onnxruntime

    card = MODEL_CARD.format(
        opset=common.OPSET,
        ir=common.IR_VERSION,
        c1=C1,
        c2=C2,
        flat=C2 * 4,
        params=sum(v.size for v in p.values()),
        test_fraction=TEST_FRACTION,
        split_seed=SPLIT_SEED,
        n_train=len(x_tr),
        n_test=len(x_te),
        epochs=EPOCHS,
        lr=LR,
        batch=BATCH,
        wd=WEIGHT_DECAY,
        train_seed=TRAIN_SEED,
        margin=margin,
        ort_version=onnxruntime.__version__,
        acc_pct=acc * 100,
        correct=int((pred == y_te).sum()),
        train_acc_pct=train_acc * 100,
        per_class=per_class,
        max_diff=max_diff,
        onnx_size=common.file_size_text(model_path),
        ref_size=common.file_size_text(ref_path),
        sha=sha,
    )
    (out / "MODEL_CARD.md").write_text(card)
    log(f"wrote {model_path} ({common.file_size_text(model_path)}), {ref_path}, MODEL_CARD.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
