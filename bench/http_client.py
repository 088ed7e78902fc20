"""The benchmarks' HTTP side: a lean keep-alive client (the same for every server) and multipart/related
bodies, built for STOW-RS and split apart for WADO-RS frames."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import threading
from collections.abc import Sequence
from typing import Self
from urllib.parse import urlsplit


class Response:
    """The parts of an HTTP answer the checks need (httpx-like names)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # lower-case names
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> object:
        if "gzip" in self.headers.get(
            "content-encoding", ""
        ):  # asked for by the metadata requests, as browsers do
            return json.loads(gzip.decompress(self.content))
        return json.loads(self.content)


# What a failed request raises (connection refused/reset, bad status line...).
CLIENT_ERRORS = (OSError, http.client.HTTPException)


class Client:
    """Minimal keep-alive HTTP/1.1 client, one connection per thread and host.

    Not httpx: on this kind of host (few cores shared by client and server)
    httpx's per-request Python overhead capped frame fetching at ~500
    frames/s, below what the servers deliver, so the client and not the
    server was being measured. http.client reads bodies with a single
    recv loop in C and roughly halves that overhead. It sends
    ``Accept-Encoding: identity``, so no server spends time on gzip over
    loopback, and the same client is used for every server.
    """

    def __init__(self, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _conn(self, netloc: str, fresh: bool = False) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(netloc)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            conns[netloc] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (0, 1):
            conn = self._conn(parts.netloc, fresh=attempt == 1)
            try:
                conn.request(method, target, body=body, headers=headers or {})
                r = conn.getresponse()
                content = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: retry once
                # on a new one (all our requests are safe to replay).
                conn.close()
                if attempt:
                    raise
                continue
            if r.will_close:
                conn.close()
            hdrs: dict[str, str] = {}
            for k, v in r.getheaders():
                k = k.lower()
                hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
            return Response(r.status, hdrs, content)
        raise AssertionError("unreachable")

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        return self.request("GET", url, headers=headers)

    def post(self, url: str, content: bytes, headers: dict[str, str] | None = None) -> Response:
        return self.request("POST", url, body=content, headers=headers)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    head, *rest = value.split(";")
    params = {}
    for item in rest:
        if "=" in item:
            k, v = item.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    return head.strip().lower(), params


def multipart_body(parts: Sequence[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body of ``parts`` and its Content-Type."""
    boundary = "bench-" + hashlib.sha1(b"".join(p[-64:] for p in parts)).hexdigest()
    chunks: list[bytes] = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body into (headers, payload) parts."""
    mime, params = content_type_params(content_type)
    if not mime.startswith("multipart/") or "boundary" not in params:
        raise ValueError(f"not a multipart answer: {content_type!r}")
    delim = b"--" + params["boundary"].encode()
    parts = []
    # Anything before the first delimiter is preamble; after "--" epilogue.
    for chunk in body.split(delim)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without header separator")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts
