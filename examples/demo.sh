#!/usr/bin/env bash
# The raygpu demo: a local cluster, both examples deployed, called over HTTP, one call after
# scale-to-zero, then the status. The cluster keeps running; `raygpu down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${RAYGPU_PORT:-8000}"
if raygpu ls >/dev/null 2>&1; then
  echo "== using the running raygpu cluster"
else
  echo "== starting a local cluster (2 logical H100s, gateway on port $PORT)"
  raygpu up --local --gpus 2 --accelerator H100 --port "$PORT"
fi
URL="$(python -c 'from raygpu.sdk.connection import connect; connect(); from raygpu.sdk.control import gateway_url; print(gateway_url())' 2>/dev/null)"

echo "== deploying examples/hello.py and examples/embeddings.py"
raygpu deploy examples/hello.py
raygpu deploy examples/embeddings.py

echo "== POST $URL/hello/greet"
raygpu call hello/greet --url "$URL" --data '{"name": "raygpu", "excited": true}'

echo "== POST $URL/embeddings/Embedder/embed (first call loads all-MiniLM-L6-v2 on a GPU replica)"
raygpu call embeddings/Embedder/embed --url "$URL" \
  --data '{"sentences": ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell."]}' |
  python -c '
import json, sys
v = json.load(sys.stdin)
cos = lambda a, b: sum(x * y for x, y in zip(a, b))
print(f"{len(v)} vectors of {len(v[0])} dims; paraphrase {cos(v[0], v[1]):.2f}, unrelated {cos(v[0], v[2]):.2f}")'

echo "== waiting for hello/greet to scale to zero (scaledown_window=10 s)"
for _ in $(seq 1 120); do
  running="$(raygpu status hello --json | python -c 'import json,sys; f=json.load(sys.stdin)["functions"][0]["replicas"]; print(f["running"] + f["starting"])')"
  [ "$running" = "0" ] && break
  sleep 1
done
raygpu status hello

echo "== calling hello/greet at zero replicas"
time raygpu call hello/greet --data '{"name": "again"}'

raygpu status hello
raygpu status embeddings
echo "== the cluster keeps running: try \`raygpu ls\`, \`raygpu logs hello\`; stop it with \`raygpu down\`"
