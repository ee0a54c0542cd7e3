#!/usr/bin/env bash
# One command: install fedge (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers (pytest-xdist), one test file each at a time: most of the suite's slow
# tests wait on processes they started (SuperLink, SuperNodes, cloud, agents), so two
# files at once use the two cores the suite would otherwise leave idle. FEDGE_TEST_WORKERS=0
# runs everything in this process; later options (e.g. -n 0) override these.
exec .venv/bin/python -m pytest -n "${FEDGE_TEST_WORKERS:-2}" --dist loadfile "$@"
