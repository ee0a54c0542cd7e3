"""Make ``data/samples/vtest_clip.mp4``, the short clip ``fedge edge`` runs on by default.

The source is OpenCV's ``samples/data/vtest.avi`` (768x576, 10 fps, 795 frames, people
walking outdoors), shipped by Debian's ``opencv-doc`` package as
``/usr/share/doc/opencv-doc/examples/data/vtest.avi``. We keep frames 540-779 (the
24-second window where OpenCV's HOG people detector finds the most people), resize
them to 640x480 (same 4:3 aspect) and re-encode them as MPEG-4 Part 2 (``mp4v``),
which every OpenCV build with FFmpeg decodes.

Usage::

    python scripts/make_sample_clip.py \
        --src /usr/share/doc/opencv-doc/examples/data/vtest.avi \
        --out data/samples/vtest_clip.mp4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

__all__ = ["make_clip", "main"]

DEFAULT_SRC = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "samples" / "vtest_clip.mp4"
START_FRAME = 540
NUM_FRAMES = 240
SIZE = (640, 480)


def make_clip(src: Path, out: Path, start: int, count: int, size: tuple[int, int]) -> int:
    """Copy ``count`` frames of ``src`` from ``start`` on to ``out``; return frames written."""
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {src}: install opencv-doc or pass --src")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    written = 0
    index = 0
    try:
        while written < count:
            ok, frame = cap.read()
            if not ok:
                break
            if index >= start:
                writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
                written += 1
            index += 1
    finally:
        cap.release()
        writer.release()
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--start", type=int, default=START_FRAME)
    parser.add_argument("--frames", type=int, default=NUM_FRAMES)
    args = parser.parse_args(argv)
    written = make_clip(args.src, args.out, args.start, args.frames, SIZE)
    check = cv2.VideoCapture(str(args.out))
    decoded = int(check.get(cv2.CAP_PROP_FRAME_COUNT))
    check.release()
    print(f"wrote {written} frames to {args.out} ({args.out.stat().st_size} bytes)")
    return 0 if written == args.frames and decoded == written else 1


if __name__ == "__main__":
    sys.exit(main())
