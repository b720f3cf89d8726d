"""HTTP servers that misbehave on purpose, for the remote-read refusals (issue 26).

`serve(root, mode)` serves `root` like `http_range.serve`, except:

- "stall": answers HEAD, then never sends a byte of any GET (a read timeout must end the wait);
- "endless": declares no size, then sends the file's bytes followed by zeros without end (a client
  that reads "to the end" fills its disk or memory);
- "gzip": sends a gzip bomb (`BOMB_BYTES` of zeros compressed ~1000:1) with `Content-Encoding: gzip`
  for every file, whatever was asked (a client that decompresses transparently fills its memory);
- "short": declares the full size and a full range, sends half of it and closes the connection.

A module-level helper `background(root, mode)` starts one that lives as long as the process (for
crafted cases whose command runs in another process while the case's builder has returned).
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from pathlib import Path

from http_range import _Handler, serve as _serve_plain

BOMB_BYTES = 1 << 30  # what the gzip body expands to


def _gzip_bomb(nbytes: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    block = bytes(1 << 20)
    parts = [comp.compress(block) for _ in range(nbytes >> 20)]
    return b"".join(parts) + comp.flush()


_BOMB: list[bytes] = []


class _Hostile(_Handler):
    mode: str = "stall"
    stop: threading.Event

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        data = path.read_bytes()
        if self.mode == "stall":
            while not self.stop.wait(0.2):
                pass
            return
        if self.mode == "gzip":
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(_BOMB[0])))
            self.end_headers()
            self.wfile.write(_BOMB[0])
            return
        self.send_response(200 if self.mode == "endless" else 206)
        if self.mode == "endless":
            self.end_headers()  # no length: the body goes on until the client hangs up
            with contextlib.suppress(OSError):
                self.wfile.write(data)
                zeros = bytes(1 << 20)
                while not self.stop.is_set():
                    self.wfile.write(zeros)
            return
        self.send_header("Content-Length", str(len(data)))  # "short": promise everything, send half
        self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def do_HEAD(self) -> None:  # noqa: N802
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.mode == "gzip":
            self.send_header("Content-Encoding", "gzip")
        if self.mode != "endless":
            self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


@contextlib.contextmanager
def serve(root: str | Path, mode: str):
    """Serve `root` on 127.0.0.1 misbehaving as `mode` says; yields the base URL."""
    import http.server

    if mode == "plain":
        with _serve_plain(root) as (base, _):
            yield base
        return
    if mode == "gzip" and not _BOMB:
        _BOMB.append(_gzip_bomb(BOMB_BYTES))  # made before serving: a slow first answer would look like a stall
    stop = threading.Event()
    handler = type("Handler", (_Hostile,), {"root": Path(root).resolve(), "counter": {"bytes": 0, "requests": 0},
                                            "mode": mode, "stop": stop})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # a client that hangs up on a hostile body is expected
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        time.sleep(0.3)  # let handlers notice
        server.shutdown()
        server.server_close()


_LIVE: list[contextlib.ExitStack] = []


def background(root: str | Path, mode: str) -> str:
    """Start a server for `root` that lives until this process ends; its base URL."""
    stack = contextlib.ExitStack()
    base = stack.enter_context(serve(root, mode))
    _LIVE.append(stack)
    return base
