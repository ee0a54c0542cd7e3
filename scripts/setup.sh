#!/usr/bin/env bash
# Create .venv (if needed) and install fedge for development: every role (the `all` extra)
# and the test tools (`.[dev]`). Idempotent. A node installs only its role's extra instead,
# e.g. `pip install ".[edge]"` on a camera node (see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

# Exactly one OpenCV: fedge (and MediaPipe) use opencv-contrib-python. Another distribution
# that provides cv2 (opencv-python-headless from an older fedge, opencv-python, ...) writes
# into the same cv2/ folder, so which one is imported depends on install order. Remove the
# others, then reinstall ours, whose shared files the removal deleted.
others=$(.venv/bin/python - <<'PY'
import importlib.metadata as md

names = set()
for dist in md.distributions():
    name = dist.metadata["Name"]
    if name.lower().replace("_", "-") == "opencv-contrib-python":
        continue
    if any(str(f).replace("\\", "/") == "cv2/__init__.py" for f in dist.files or ()):
        names.add(name)
print(" ".join(sorted(names)))
PY
)
if [ -n "$others" ]; then
  echo "removing other OpenCV distributions: $others"
  # shellcheck disable=SC2086  # a list of names
  .venv/bin/python -m pip uninstall --quiet -y $others
  version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("opencv-contrib-python"))')
  .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "opencv-contrib-python==$version"
fi
echo "fedge installed in $(pwd)/.venv"
