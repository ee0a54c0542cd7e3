"""Every benchmark figure in the README comes from a committed result file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_figures_match_the_result_files() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/readme_figures.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
