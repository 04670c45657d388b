#!/usr/bin/env bash
# Makes sure the repository's Python venv (.venv at the repository root,
# gitignored) exists and holds exactly models/requirements.txt, then prints
# the venv's python path on stdout (everything else goes to stderr).
#   PY=$(models/venv.sh)    # e.g. for the Rust benchmark, to run models/bench_ort.py
# Environment: PYTHON (interpreter that creates the venv, default python3),
# EDGEFLEET_VENV (venv directory, default <repo>/.venv).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${EDGEFLEET_VENV:-$repo/.venv}
req=$repo/models/requirements.txt
stamp=$venv/.models-requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)

if [[ ! -x $venv/bin/python ]]; then
  echo "models/venv.sh: creating $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv" >&2
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "models/venv.sh: installing models/requirements.txt into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
