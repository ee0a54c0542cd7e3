"""``benchmarks/warm_worker.py``: its summary of the cold and warm requests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from warm_worker import summary  # noqa: E402


def _rows(op: str, mode: str, seconds: list[float]) -> list[dict[str, object]]:
    return [{"op": op, "mode": mode, "request": i + 1, "seconds": s} for i, s in enumerate(seconds)]


def test_the_first_warm_request_is_kept_apart_and_the_saving_is_cold_minus_warm() -> None:
    # Prepare: train cold 20, 22, 30 s; warm 21 (starts the worker), then 4 and 6 s
    rows = _rows("train", "cold", [20.0, 22.0, 30.0]) + _rows("train", "warm", [21.0, 4.0, 6.0])
    rows += _rows("evaluate", "cold", [10.0, 12.0]) + _rows("evaluate", "warm", [9.0, 3.0])
    # Execute
    table = summary(rows)
    # Assert
    assert table == [
        {"request": "train", "cold_s": 22.0, "warm_first_s": 21.0, "warm_later_s": 5.0,
         "saved_s": 17.0, "warm_vs_cold": round(5.0 / 22.0, 3)},
        {"request": "evaluate", "cold_s": 11.0, "warm_first_s": 9.0, "warm_later_s": 3.0,
         "saved_s": 8.0, "warm_vs_cold": round(3.0 / 11.0, 3)},
    ]  # fmt: skip


def test_an_op_without_a_later_warm_request_is_left_out() -> None:
    rows = _rows("train", "cold", [20.0]) + _rows("train", "warm", [21.0])
    assert summary(rows) == []
