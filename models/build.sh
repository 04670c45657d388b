#!/usr/bin/env bash
# Rebuilds every reference model from scratch and verifies it:
#   models/build.sh
# 1. creates/updates the venv (models/venv.sh),
# 2. trains and exports digits and vibration (committed .onnx, reference.json,
#    samples.json, MODEL_CARD.md are rewritten; same seeds -> same files on
#    the same platform),
# 3. generates the random-weight MobileNetV2 into models/mobilenetv2/mobilenetv2.onnx
#    (gitignored, ~14 MB),
# 4. runs models/verify.py.
# About 30 s of one core.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$("$repo/models/venv.sh")
cd "$repo"
"$py" models/digits/train.py
"$py" models/vibration/train.py
"$py" models/mobilenetv2/generate.py models/mobilenetv2/mobilenetv2.onnx
"$py" models/verify.py
