#!/usr/bin/env bash
# The dashboard's JS+CSS, gzipped, against its budget (300 KB). Run by CI.
set -euo pipefail
cd "$(dirname "$0")"
total=0
for f in app.js app.css; do
  n=$(gzip -9 -c "$f" | wc -c)
  echo "  $f: $(wc -c < "$f") bytes, $n gzipped"
  total=$(( total + n ))
done
echo "  total: $total bytes gzipped (budget 300000)"
[ "$total" -le 300000 ] || { echo "error: over the dashboard's size budget" >&2; exit 1; }
