"""Writes a MobileNetV2 (the torchvision architecture) with seeded RANDOM
weights to an ONNX file, for benchmarks. No pretrained weights can be had on
this machine (no model hubs), so its outputs are meaningless as classes; the
compute graph, shapes and cost are those of the real network.

    python models/mobilenetv2/generate.py OUT.onnx [--seed 0] [--keep-bn] [--dynamic-batch]

The architecture follows torchvision.models.mobilenet_v2 (width 1.0):
  features[0]   Conv 3x3 s2 3->32, BN, ReLU6
  features[1-17] inverted residual blocks, settings (t, c, n, s):
                (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1)
                each: [1x1 expand conv, BN, ReLU6 when t != 1] -> 3x3 depthwise conv
                (stride s on the first block of a group), BN, ReLU6 -> 1x1 project conv, BN
                (linear bottleneck); residual add when stride 1 and in == out channels
  features[18]  Conv 1x1 320->1280, BN, ReLU6
  classifier    global average pool -> flatten -> (dropout: identity at inference) -> Linear 1280->1000
Input `input` float32 [1,3,224,224] (ImageNet-normalised RGB), output `logits` float32 [1,1000].

Weights: torchvision's init (conv kaiming-normal fan_out, linear N(0, 0.01), zero
biases, BN gamma 1 beta 0), seeded. BN running statistics are then set from the
network's own activations on 4 seeded random N(0,1) images, layer by layer, as a
trained network's would be, so activations stay in a realistic range instead of
vanishing or saturating the ReLU6s. By default BN is folded into the preceding
convolution (as torch.onnx.export does for an eval-mode model); --keep-bn keeps
BatchNormalization nodes after bias-free convolutions instead.

ReLU6 is exported as Clip(min=0, max=6). After writing, the model is run with
onnxruntime and compared with this script's own numpy forward pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402

SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
BN_EPS = 1e-5
CALIB_IMAGES = 4


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def architecture(width_mult: float) -> list[dict]:
    """The layer list: convs (with their BN and activation) and residual markers."""
    layers: list[dict] = []

    def conv(cin, cout, k, stride=1, groups=1, relu6=True):
        layers.append({"op": "conv", "cin": cin, "cout": cout, "k": k, "stride": stride, "groups": groups, "relu6": relu6})

    cin = make_divisible(32 * width_mult)
    last = make_divisible(1280 * max(1.0, width_mult))
    conv(3, cin, 3, stride=2)
    for t, c, n, s in SETTINGS:
        cout = make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = int(round(cin * t))
            residual = stride == 1 and cin == cout
            if residual:
                layers.append({"op": "save"})
            if t != 1:
                conv(cin, hidden, 1)
            conv(hidden, hidden, 3, stride=stride, groups=hidden)
            conv(hidden, cout, 1, relu6=False)
            if residual:
                layers.append({"op": "add"})
            cin = cout
    conv(cin, last, 1)
    layers.append({"op": "head", "cin": last, "classes": 1000})
    return layers


# ---------------------------------------------------------------- numpy reference


def conv_np(x, w, stride, groups):
    """x [B,C,H,W], w [O,C/groups,k,k]; padding (k-1)/2."""
    o, _, k, _ = w.shape
    pad = (k - 1) // 2
    if k == 1:
        y = np.tensordot(w[:, :, 0, 0], x[:, :, ::stride, ::stride], axes=([1], [1]))
        return y.transpose(1, 0, 2, 3)
    b, c, h, wd = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((b, o, ho, wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            sl = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
            if groups == 1:
                y += np.tensordot(w[:, :, i, j], sl, axes=([1], [1])).transpose(1, 0, 2, 3)
            else:  # depthwise: groups == C == O
                y += sl * w[None, :, 0, i, j, None, None]
    return y


def walk(layers, x, conv, head):
    """Runs `x` through `layers` in float64 numpy: residual save/add and ReLU6
    here, each conv's and the head's own step from `conv(layer, x)` and
    `head(layer, x)`."""
    saved = None
    for layer in layers:
        if layer["op"] == "save":
            saved = x
        elif layer["op"] == "add":
            x = x + saved
        elif layer["op"] == "conv":
            x = conv(layer, x)
            if layer["relu6"]:
                x = np.clip(x, 0, 6)
        elif layer["op"] == "head":
            x = head(layer, x)
    return x


def build_weights(layers, seed: int, calib: np.ndarray):
    """Seeded torchvision-style init, then BN statistics from a calibration pass.

    Returns per-conv dicts {w, gamma, beta, mean, var} plus the head (fc_w, fc_b).
    """
    rng = np.random.default_rng(seed)
    params, fc = [], []

    def conv(layer, x):
        cout, k, g = layer["cout"], layer["k"], layer["groups"]
        fan_out = cout // g * k * k
        w = (rng.standard_normal((cout, layer["cin"] // g, k, k)) * np.sqrt(2.0 / fan_out)).astype(np.float32)
        y = conv_np(x, w.astype(np.float64), layer["stride"], g)
        mean = y.mean(axis=(0, 2, 3))
        var = y.var(axis=(0, 2, 3))
        params.append({"w": w, "gamma": np.ones(cout), "beta": np.zeros(cout), "mean": mean, "var": var})
        return (y - mean[None, :, None, None]) / np.sqrt(var + BN_EPS)[None, :, None, None]

    def head(layer, x):
        fc.append((rng.standard_normal((layer["classes"], layer["cin"])) * 0.01).astype(np.float32))
        fc.append(np.zeros(layer["classes"], np.float32))
        return x

    walk(layers, calib.astype(np.float64), conv, head)
    return params, tuple(fc)


def forward_np(layers, params, head, x):
    """The exported network, in float64 numpy, with BN as exported (folded or not)."""
    it = iter(params)

    def conv(layer, x):
        p = next(it)
        y = conv_np(x, p["w"].astype(np.float64), layer["stride"], layer["groups"])
        scale = p["gamma"] / np.sqrt(p["var"] + BN_EPS)
        return y * scale[None, :, None, None] + (p["beta"] - p["mean"] * scale)[None, :, None, None]

    def fc(layer, x):
        return x.mean(axis=(2, 3)) @ head[0].T.astype(np.float64) + head[1]

    return walk(layers, x.astype(np.float64), conv, fc)


# ---------------------------------------------------------------- ONNX export


def export(layers, params, head, keep_bn: bool, batch, resolution: int):
    nodes, inits = [], []
    cur, saved = "input", None
    it = iter(params)
    n_conv = n_add = 0
    for layer in layers:
        if layer["op"] == "save":
            saved = cur
        elif layer["op"] == "add":
            n_add += 1
            out = f"add{n_add}"
            nodes.append(helper.make_node("Add", [cur, saved], [out], name=out))
            cur = out
        elif layer["op"] == "conv":
            p = next(it)
            n_conv += 1
            name = f"conv{n_conv}"
            k, pad = layer["k"], (layer["k"] - 1) // 2
            attrs = dict(kernel_shape=[k, k], strides=[layer["stride"]] * 2, pads=[pad] * 4, group=layer["groups"])
            if keep_bn:
                inits.append(common.initializer(f"{name}.weight", p["w"]))
                nodes.append(helper.make_node("Conv", [cur, f"{name}.weight"], [name], name=name, **attrs))
                bn_in = [f"{name}.bn.{s}" for s in ("scale", "bias", "mean", "var")]
                for n_, v in zip(bn_in, (p["gamma"], p["beta"], p["mean"], p["var"])):
                    inits.append(common.initializer(n_, v))
                nodes.append(helper.make_node("BatchNormalization", [name] + bn_in, [f"{name}.bn"], name=f"{name}.bn", epsilon=BN_EPS))
                out = f"{name}.bn"
            else:
                scale = p["gamma"] / np.sqrt(p["var"] + BN_EPS)
                inits.append(common.initializer(f"{name}.weight", p["w"] * scale[:, None, None, None]))
                inits.append(common.initializer(f"{name}.bias", p["beta"] - p["mean"] * scale))
                nodes.append(helper.make_node("Conv", [cur, f"{name}.weight", f"{name}.bias"], [name], name=name, **attrs))
                out = name
            if layer["relu6"]:
                nodes.append(helper.make_node("Clip", [out, "relu6.min", "relu6.max"], [f"{name}.relu6"], name=f"{name}.relu6"))
                out = f"{name}.relu6"
            cur = out
        elif layer["op"] == "head":
            inits += [common.initializer("classifier.weight", head[0]), common.initializer("classifier.bias", head[1])]
            nodes += [
                helper.make_node("GlobalAveragePool", [cur], ["pool"], name="pool"),
                helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
                helper.make_node("Gemm", ["flat", "classifier.weight", "classifier.bias"], ["logits"], name="classifier", transB=1),
            ]
    inits += [common.initializer("relu6.min", np.array(0.0)), common.initializer("relu6.max", np.array(6.0))]
    graph = helper.make_graph(
        nodes,
        "mobilenet_v2",
        inputs=[common.value_info("input", [batch, 3, resolution, resolution])],
        outputs=[common.value_info("logits", [batch, 1000])],
        initializer=inits,
    )
    return common.make_model(
        graph,
        "MobileNetV2 (torchvision architecture) with seeded RANDOM weights, for benchmarks only.",
        {"weights": "random (seeded), not pretrained", "batch_norm": "kept" if keep_bn else "folded into conv"},
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="where to write the .onnx file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-bn", action="store_true", help="keep BatchNormalization nodes (default: folded)")
    ap.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dim N (default: fixed 1)")
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--resolution", type=int, default=224)
    args = ap.parse_args()

    t0 = time.time()
    layers = architecture(args.width_mult)
    calib = np.random.default_rng(args.seed + 1).standard_normal((CALIB_IMAGES, 3, args.resolution, args.resolution))
    params, head = build_weights(layers, args.seed, calib)
    model = export(layers, params, head, args.keep_bn, "N" if args.dynamic_batch else 1, args.resolution)
    common.save_model(model, args.out)

    # Verify: onnxruntime against the numpy forward pass, on a fresh seeded image.
    x = np.random.default_rng(args.seed + 2).standard_normal((1, 3, args.resolution, args.resolution)).astype(np.float32)
    ort_logits = common.session(args.out).run(["logits"], {"input": x})[0]
    np_logits = forward_np(layers, params, head, x)
    max_diff = float(np.abs(ort_logits - np_logits).max())
    n_values = sum(int(np.prod(t.dims)) for t in model.graph.initializer if not t.name.startswith("relu6."))
    summary = {
        "path": str(args.out),
        "bytes": args.out.stat().st_size,
        "sha256": common.sha256_of(args.out),
        "stored_values": n_values,
        "conv_layers": len(params),
        "batch_norm": "kept" if args.keep_bn else "folded",
        "input": {"name": "input", "shape": [1 if not args.dynamic_batch else "N", 3, args.resolution, args.resolution], "dtype": "float32"},
        "output": {"name": "logits", "shape": [1 if not args.dynamic_batch else "N", 1000], "dtype": "float32"},
        "logits_std": float(ort_logits.std()),
        "max_abs_diff_ort_vs_numpy": max_diff,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(summary))
    if not np.isfinite(ort_logits).all() or max_diff > 1e-3:
        print("onnxruntime disagrees with the numpy forward pass", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
