"""A tiny MJPEG-over-HTTP camera for tests: ``python mjpeg_server.py PORT JPEG_DIR [FPS]``.

Serves every ``*.jpg`` of ``JPEG_DIR`` in a loop as ``multipart/x-mixed-replace`` at
``http://127.0.0.1:PORT/stream.mjpg`` and prints ``ready PORT`` once listening (pass
port 0 to let the OS choose). Killing the process drops the stream mid-frame, like a
camera losing power.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__: list[str] = []


def main() -> None:
    port = int(sys.argv[1])
    frames = [p.read_bytes() for p in sorted(Path(sys.argv[2]).glob("*.jpg"))]
    period = 1.0 / float(sys.argv[3]) if len(sys.argv) > 3 else 0.02

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            index = 0
            try:
                while True:
                    jpg = frames[index % len(frames)]
                    index += 1
                    self.wfile.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        + str(len(jpg)).encode()
                        + b"\r\n\r\n"
                        + jpg
                        + b"\r\n"
                    )
                    time.sleep(period)
            except (BrokenPipeError, ConnectionResetError):
                pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
