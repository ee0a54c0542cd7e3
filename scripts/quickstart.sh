#!/usr/bin/env bash
# One command on a fresh machine: install fedge, then run the main job on the embedded
# samples: federated training (4 simulated clients, 3 rounds, Fashion-MNIST slice) and
# the edge node on the bundled pedestrian clip (pose + face SSD, hard cases, local store).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
out=${FEDGE_OUT:-outputs/quickstart}
mkdir -p "$out"
fedge simulate --num-supernodes 4 --set num-server-rounds=3 --set local-epochs=2 \
  --set output-dir="$(pwd)/$out/federated" --set run-name=quickstart
fedge models fetch
fedge edge --max-frames 120 --jsonl "$out/edge.jsonl" --out "$out/edge-annotated.mp4" \
  --store-dir "$out/frame-store"
echo
echo "Federated metrics: $out/federated/quickstart/metrics.jsonl"
echo "Edge results:      $out/edge.jsonl, $out/edge-annotated.mp4, $out/frame-store/"
