"""The control channel of a running ``paxoskv cluster``, found by its data directory.

Rules:

- A running ``paxoskv cluster`` holds a Linux abstract unix socket named after
  the real path of its ``--data-dir`` (``address``). Holding it is the
  claim on the directory: a second ``claim`` of the same directory fails with
  ``InUse`` while the first runs, and the name is freed by the kernel when the
  holder dies however it dies (no stale lock file to clean up).
- The same socket takes requests, one line each way (UTF-8, at most
  ``LINE_BYTES_MAX``): ``restart N`` starts node N again under the running
  command, if it is not running; the answer is one line for a person,
  prefixed ``ok:`` or ``error:``. ``request`` sends one and returns the answer;
  ``NotRunning`` when no cluster holds the directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable

__all__ = ["LINE_BYTES_MAX", "InUse", "NotRunning", "address", "claim", "request", "serve"]

LINE_BYTES_MAX = 4096
_PREFIX = "paxoskv-cluster:"


class InUse(Exception):
    """Another running ``paxoskv cluster`` holds the data directory."""


class NotRunning(Exception):
    """No running ``paxoskv cluster`` holds the data directory."""


def address(data_dir: str) -> str:
    """The abstract socket name of ``data_dir`` (hashed: a path may be long)."""
    real = os.path.realpath(data_dir)
    return "\0" + _PREFIX + hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def claim(data_dir: str) -> socket.socket:
    """Bind and listen on the directory's socket; ``InUse`` if it is held."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address(data_dir))
    except OSError as exc:
        sock.close()
        raise InUse(data_dir) from exc
    sock.listen(8)
    sock.setblocking(False)
    return sock


async def serve(sock: socket.socket, handle: Callable[[str], Awaitable[str]]) -> asyncio.AbstractServer:
    """Answer each connection's one request line with ``handle(line)``."""

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            if len(line) > LINE_BYTES_MAX or not line.endswith(b"\n"):
                answer = "error: a request is one line of at most 4096 bytes"
            else:
                answer = await handle(line.decode("utf-8", "replace").strip())
            writer.write(answer.replace("\n", " ").encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, ValueError):
            pass  # a client that went away or sent nothing: nothing to answer
        finally:
            writer.close()

    return await asyncio.start_unix_server(one, sock=sock, limit=LINE_BYTES_MAX + 1)


def request(data_dir: str, line: str, timeout_s: float = 10.0) -> str:
    """Send ``line`` to the cluster holding ``data_dir``; its one-line answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(address(data_dir))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NotRunning(data_dir) from None
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) <= LINE_BYTES_MAX:
            chunk = s.recv(LINE_BYTES_MAX)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()
