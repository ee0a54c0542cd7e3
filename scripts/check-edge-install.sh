#!/usr/bin/env bash
# Prove the edge install profile: a fresh virtualenv (in a temp dir) with only
# `pip install ".[edge]"` (no TensorFlow, Flower, Ray, MediaPipe, matplotlib) runs
# `fedge edge` on the bundled sample clip. The virtualenv is removed afterwards.
#
#   bash scripts/check-edge-install.sh            # PYTHON=python3.11 to choose the interpreter
#
# Models come from the cache (`fedge models fetch`: $FEDGE_MODEL_DIR or ~/.cache/fedge/models;
# downloaded once if it is empty). CI runs this after the test suite (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
FRAMES=30
HEAVY="tensorflow tensorflow-cpu keras flwr flwr-datasets ray mediapipe matplotlib"

work=$(mktemp -d "${TMPDIR:-/tmp}/fedge-edge-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
say() { echo "check-edge-install: $*"; }
die() { echo "check-edge-install: FAILED: $*" >&2; exit 1; }

# Install from a copy of the working tree, so the build leaves nothing in the checkout.
mkdir "$work/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$work/src"
else
  tar --exclude=./.venv --exclude=./outputs -cf - . | tar -xf - -C "$work/src"
fi

say "fresh virtualenv, pip install \".[edge]\""
"$PYTHON" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
"$venv_python" -m pip install --quiet --disable-pip-version-check "$work/src[edge]"

# Run from the temp dir: only the installed wheel is importable, not the checkout.
cd "$work"
say "no training, simulation or MediaPipe package; exactly one OpenCV"
"$venv_python" - "$HEAVY" <<'PY' || die "the edge profile is not what pyproject.toml promises"
import importlib.metadata as md
import sys

import fedge

installed = {d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()}
heavy = sorted(installed & set(sys.argv[1].split()))
cv2_providers = sorted(
    d.metadata["Name"]
    for d in md.distributions()
    if any(str(f).replace("\\", "/") == "cv2/__init__.py" for f in d.files or ())
)
print(f"  {len(installed)} distributions; fedge from {fedge.__file__}")
print(f"  cv2 provided by: {', '.join(cv2_providers) or 'nothing'}")
if heavy:
    sys.exit(f"  installed but not allowed: {', '.join(heavy)}")
if cv2_providers != ["opencv-contrib-python"]:
    sys.exit("  expected exactly one OpenCV distribution: opencv-contrib-python")
if not fedge.__file__.startswith(sys.prefix):
    sys.exit("  fedge is not imported from the virtualenv")
PY

say "fedge models fetch"
"$work/venv/bin/fedge" models fetch || die "fedge models fetch"

say "fedge edge on the bundled sample clip, $FRAMES frames"
"$work/venv/bin/fedge" edge --max-frames "$FRAMES" --quiet --jsonl "$work/frames.jsonl" \
  --store-dir "$work/store" || die "fedge edge"
"$venv_python" - "$work/frames.jsonl" "$FRAMES" <<'PY' || die "fedge edge wrote unexpected records"
import json
import sys

records = [json.loads(line) for line in open(sys.argv[1])]
expected = int(sys.argv[2])
if [r["frame"] for r in records] != list(range(expected)):
    sys.exit(f"  expected frames 0..{expected - 1}, got {len(records)} records")
people = sum(1 for r in records if r["persons"])
print(f"  {len(records)} frames, {people} with people")
if people == 0:
    sys.exit("  pose found nobody on the sample clip")
PY
say "passed in ${SECONDS} s"
