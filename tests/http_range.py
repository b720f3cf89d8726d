"""A local HTTP file server with byte-range support, for remote-read tests and the sharing benchmark.

Python's `http.server` ignores `Range` headers; fsspec's https back-end needs them for ranged reads.
This one serves a folder on 127.0.0.1 (an ephemeral port), answers `Range: bytes=a-b` with 206
and counts the body bytes it sends, so a test can tell how much of a file a command read.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    counter: dict

    def log_message(self, *args) -> None:  # quiet
        pass

    def _file(self) -> Path | None:
        path = (self.root / self.path.split("?")[0].lstrip("/")).resolve()
        return path if path.is_file() and self.root in path.parents else None

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        match = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        start, end = 0, size - 1
        if match:
            start = int(match.group(1) or 0)
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        length = max(0, end - start + 1)
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with open(path, "rb") as fh:
            fh.seek(start)
            self.wfile.write(fh.read(length))
        self.counter["bytes"] += length
        self.counter["requests"] += 1


@contextlib.contextmanager
def serve(root: str | Path):
    """Serve `root` on 127.0.0.1; yields (base URL, counter dict with 'bytes' and 'requests')."""
    counter = {"bytes": 0, "requests": 0}
    handler = type("Handler", (_Handler,), {"root": Path(root).resolve(), "counter": counter})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
