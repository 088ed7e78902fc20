"""The audit log: one JSON line per request that touches patient data (DICOMWEB_AUDIT_LOG=path, or "-" for
stdout).

Each line says when (UTC), who (the token's ``sub`` or ``key:NAME``), from where (client address), what: the
action and its DICOM audit EventID of PS3.15 A.5 (code, scheme DCM, meaning) with the EventActionCode, which
studies and series were touched, the outcome (HTTP status and EventOutcomeIndicator: 0 success, 4 minor
failure for 4xx, 8 serious failure for 5xx) and the bytes in and out.

| action   | requests                              | EventID                                  | action code |
|----------|---------------------------------------|------------------------------------------|-------------|
| search   | QIDO-RS                               | 110112 Query                             | E |
| retrieve | WADO-RS, metadata, frames, rendered.. | 110104 DICOM Instances Transferred       | R |
| store    | STOW-RS                               | 110104 DICOM Instances Transferred       | C |
| delete   | DELETE of a study                     | 110105 DICOM Study Deleted               | D |
| delete   | DELETE of a series or instance        | 110103 DICOM Instances Accessed          | D |
| lifecycle| a lifecycle rule derived or moved one | 110103 DICOM Instances Accessed          | U |

Lifecycle changes (`dicomweb lifecycle --apply`, or the server's schedule) are not requests: the storage
code reports each through a callback, written here by `lifecycle_record` (who: the command or schedule;
the original and derived SOP Instance UIDs, or the instances and bytes moved).

Search keys are recorded with their values, except those that identify a patient (the Patient module's
group 0010, AccessionNumber, and anything that is not a known attribute), which are masked as ``***``.

Lines are buffered and flushed at least once a second by a thread, so a crash loses at most the last second;
SIGHUP makes the file be reopened (for logrotate), as does rotating it by hand and sending the signal.
"""

from __future__ import annotations

import gzip
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb.auth import principal_of
from storage import parse_attribute

log = logging.getLogger(__name__)

EVENTS = {
    "search": ("110112", "Query", "E"),
    "retrieve": ("110104", "DICOM Instances Transferred", "R"),
    "store": ("110104", "DICOM Instances Transferred", "C"),
    "delete-study": ("110105", "DICOM Study Deleted", "D"),
    "delete": ("110103", "DICOM Instances Accessed", "D"),
    "lifecycle": ("110103", "DICOM Instances Accessed", "U"),
}
QIDO_TAILS = (
    ("studies",),
    ("series",),
    ("instances",),
    ("studies", "*", "series"),
    ("studies", "*", "instances"),
    ("studies", "*", "series", "*", "instances"),
)
# Search keys recorded as they are (what was searched for, not for whom); any other key's value is masked.
UNMASKED_PARAMS = {"limit", "offset", "includefield", "fuzzymatching", "orderby"}
MASKED_TAGS = {
    0x00080050,
    0x00080090,
    0x00081048,
    0x00081060,
    0x00200010,
    0x00321032,
}  # accession, physicians
MAX_CAPTURE = 16 * 1024 * 1024  # of a STOW response body, to find the studies stored
FLUSH_SECONDS = 1.0


def masked_query(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
        low = key.strip().lower()
        if low == "access_token":  # AuthMiddleware, inside, removes it; never written here either
            continue
        if low in UNMASKED_PARAMS:
            shown: str = value[:200]
        else:
            tag = parse_attribute(key.strip().split(".")[0])
            identifying = tag is None or tag >> 16 == 0x0010 or tag in MASKED_TAGS
            shown = "***" if identifying and value else value[:200]
            key = key[:80] if tag is not None else "(unknown key)"
        if key in out:
            previous = out[key]
            out[key] = [*previous, shown] if isinstance(previous, list) else [previous, shown]
        else:
            out[key] = shown
    return out


def _matches(parts: list[str], pattern: tuple[str, ...]) -> bool:
    return len(parts) == len(pattern) and all(p == "*" or p == q for p, q in zip(pattern, parts, strict=True))


def classify(method: str, parts: list[str]) -> str | None:
    """The audited action of a request (path parts relative to the root), or None for one without patient
    data."""
    if not parts or parts[0] not in ("studies", "series", "instances") or parts[-1] == "labels":
        return None  # /status, access labels and the like
    if method == "POST":
        return "store" if parts[-1] != "labels" else None
    if method == "DELETE":
        return "delete-study" if len(parts) == 2 else "delete"
    if method in ("GET", "HEAD"):
        return "search" if any(_matches(parts, p) for p in QIDO_TAILS) else "retrieve"
    return None


def _uids_from_path(parts: list[str]) -> tuple[list[str], list[str]]:
    study = parts[1] if len(parts) > 1 and parts[0] == "studies" else None
    series = parts[3] if len(parts) > 3 and parts[2] == "series" else None
    return ([study] if study else []), ([series] if series else [])


def uids_from_stow(body: bytes, encoding: str) -> tuple[list[str], list[str]]:
    """Studies and series of the instances a STOW response lists as stored (their RetrieveURLs)."""
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        doc = orjson.loads(body)
    except (OSError, EOFError, orjson.JSONDecodeError):
        return [], []
    studies: dict[str, None] = {}
    series: dict[str, None] = {}
    items = (doc.get("00081199") or {}).get("Value") or [] if isinstance(doc, dict) else []
    for item in items:
        for url in (item.get("00081190") or {}).get("Value") or []:
            parts = str(url).split("/")
            if "studies" in parts and "series" in parts:
                i, j = parts.index("studies"), parts.index("series")
                if i + 1 < len(parts) and j + 1 < len(parts):
                    studies[parts[i + 1]] = None
                    series[parts[j + 1]] = None
    return list(studies), list(series)


def lifecycle_record(change: dict[str, Any], who: str) -> dict[str, Any]:
    """The audit line of one change a lifecycle rule made (storage.lifecycle.apply's `on_change`)."""
    code, meaning, action_code = EVENTS["lifecycle"]
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "action": "lifecycle",
        "event_id": {"code": code, "scheme": "DCM", "meaning": meaning},
        "event_action": action_code,
        "who": who,
        "auth": None,
        "client": None,
        "studies": [change["study"]],
        "series": [change["series"]] if change.get("series") else [],
        "outcome": 0,
        "change": {k: v for k, v in change.items() if k not in ("study", "series", "time")},
    }


class AuditLog:
    """A JSON-lines file (or stdout) flushed at least every second, reopened on request (SIGHUP)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._dirty = False
        self._reopen = False
        self._stop = threading.Event()
        self._open()
        self._thread = threading.Thread(target=self._flusher, name="audit-flush", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        if self.target == "-":
            self._file = sys.stdout
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.target)), exist_ok=True)
            self._file = open(self.target, "a", encoding="utf-8")  # noqa: SIM115 (kept open, closed in close())

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record).decode() + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._dirty = True

    def reopen(self) -> None:
        """Called from a signal handler: the flusher thread reopens within a second."""
        self._reopen = True

    def _flusher(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._file is None:
                return
            try:
                if self._dirty:
                    self._file.flush()
                    self._dirty = False
                if self._reopen and self.target != "-":
                    self._reopen = False
                    self._file.close()
                    self._open()
            except OSError as exc:
                log.error("audit log %s: %s", self.target, exc)

    def close(self) -> None:
        self._stop.set()
        self.flush()
        with self._lock:
            if self._file is not None and self._file is not sys.stdout:
                self._file.close()
            self._file = None


class AuditMiddleware:
    """Outside AuthMiddleware, so refused attempts are audited too (with who = "unauthenticated")."""

    def __init__(self, app: ASGIApp, root: str) -> None:
        self.app = app
        self.root = root.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        audit: AuditLog | None = getattr(scope["app"].state, "audit", None) if "app" in scope else None
        if scope["type"] != "http" or audit is None or not path.startswith(self.root + "/"):
            await self.app(scope, receive, send)
            return
        parts = [p for p in path[len(self.root) :].split("/") if p]
        action = classify(scope["method"], parts)
        if action is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        status, sent, received = 0, 0, 0
        captured: list[bytes] = []
        encoding = ""

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent, encoding
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-encoding":
                        encoding = value.decode("latin-1").strip().lower()
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                sent += len(body)
                if action == "store" and sent <= MAX_CAPTURE:
                    captured.append(body)
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            status = status or 500
            raise
        finally:
            record = self._record(scope, action, parts, status, received, sent, b"".join(captured), encoding)
            try:
                audit.write(record)
            except (OSError, ValueError) as exc:
                log.error("cannot write the audit log: %s", exc)

    def _record(
        self,
        scope: Scope,
        action: str,
        parts: list[str],
        status: int,
        received: int,
        sent: int,
        stow_body: bytes,
        encoding: str,
    ) -> dict[str, Any]:
        code, meaning, action_code = EVENTS[action]
        studies, series = _uids_from_path(parts)
        if action == "store" and status < 300:
            stored_studies, stored_series = uids_from_stow(stow_body, encoding)
            studies = list(dict.fromkeys(studies + stored_studies))
            series = stored_series
        principal = principal_of(scope)
        client = scope.get("client")
        record: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "action": action.removesuffix("-study"),
            "event_id": {"code": code, "scheme": "DCM", "meaning": meaning},
            "event_action": action_code,
            "who": principal.who if principal else "unauthenticated",
            "auth": principal.method if principal else None,
            "client": client[0] if client else None,
            "method": scope["method"],
            "path": scope.get("path", ""),
            "studies": studies,
            "series": series,
            "status": status,
            "outcome": 0 if status < 400 else 4 if status < 500 else 8,
            "bytes_in": received,
            "bytes_out": sent,
        }
        if action == "search" and scope.get("query_string"):
            record["query"] = masked_query(scope["query_string"])
        return record
