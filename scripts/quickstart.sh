#!/usr/bin/env bash
# One command on a fresh machine: install fedge, then run the main job on the embedded
# sample: `fedge demo`, the whole edge/cloud loop on the bundled pedestrian clip (3 camera
# sites, fedge cloud on loopback, a SuperLink and a SuperNode per site, 3 Flower rounds of
# the person detector, int8 export, verified install and live swap on every site).
# FEDGE_OUT picks the output folder (default outputs/demo; replaced on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
out=${FEDGE_OUT:-outputs/demo}
rm -rf "$out"
fedge models fetch
fedge demo --out "$out"
echo
echo "Per round: $out/rounds.jsonl; report and plots: $out/report.md, $out/plots/"
