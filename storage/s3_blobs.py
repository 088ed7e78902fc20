"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage), through obstore.

obstore is the Python face of the Rust `object_store` crate (the one Apache Arrow, DataFusion and Delta
Lake use): async calls, ranged GETs, multipart upload with parts sent concurrently, retries with backoff,
and the standard AWS configuration (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, web identity, ECS and
instance metadata credentials) in one wheel with no Python dependencies. aiobotocore would bring botocore
and aiohttp, and leave multipart uploads and ranged streaming to be written here.

What the local store guarantees holds here too: an object appears under its key whole or not at all (a PUT
is atomic; a multipart upload becomes an object only when it is completed), keys come only from
`new_blob_key` (validated UIDs), and a frame is a ranged GET of the bytes the index points at, never the
whole object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import obstore
from obstore.store import S3Store

from storage.blobs import BlobStoreUnavailable, check_key
from storage.config import Settings

# Objects above this size go up as a multipart upload, in parts of this size (S3's least is 5 MiB).
PART_SIZE = 8 << 20
# Parts of one multipart upload in flight at once, and objects of one put_files call.
PART_CONCURRENCY = 4
PUT_PARALLEL = 8
# Whole-object reads (a response streaming an instance, a file for a codec) go in ranged pieces of this
# size: each is a short request, so a slow client never holds one GET open past the service's timeouts.
READ_PIECE = 8 << 20
# Written at start, looked at by readiness checks (not a blob: outside the 2-hex-digit folders of blob keys).
READY_MARKER = "_readiness/marker"
# A readiness or start-up check that has no answer by then fails (rather than waiting for every retry).
CHECK_SECONDS = 10.0


class S3BlobStore:
    def __init__(self, store: S3Store, *, label: str, tmp_dir: Path, part_size: int = PART_SIZE) -> None:
        self.store = store
        self.label = label
        self.tmp_dir = tmp_dir
        self.part_size = part_size

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> S3BlobStore:
        location = settings.s3_location
        assert location is not None
        bucket, prefix = location
        # obstore's option types are TypedDicts: these are built as plain dicts, checked by obstore itself.
        config: Any = {}
        if settings.s3_endpoint:
            config["endpoint"] = settings.s3_endpoint
        if settings.s3_region:
            config["region"] = settings.s3_region
        client: Any = {
            # An endpoint the operator wrote with http:// (MinIO on a private network, a test server on
            # loopback) is meant: object_store refuses plain HTTP unless told.
            "allow_http": settings.s3_endpoint.startswith("http://"),
            "connect_timeout": timedelta(seconds=5),
            "timeout": timedelta(seconds=120),
        }
        retry: Any = {
            "max_retries": 4,
            "retry_timeout": timedelta(seconds=30),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=5),
                "base": 2.0,
            },
        }
        try:
            store = S3Store(
                bucket,
                prefix=prefix or None,
                config=config,
                client_options=client,
                retry_config=retry,
            )
        except Exception as exc:  # noqa: BLE001 - a malformed AWS_* variable, told in one line
            raise BlobStoreUnavailable(f"s3://{bucket}/{prefix}: {short_reason(exc)}") from None
        # The label is shown (banner, /status): never with credentials an endpoint URL might carry.
        where = without_userinfo(settings.s3_endpoint) or f"AWS {settings.s3_region or 'us-east-1'}"
        label = f"s3://{bucket}/{prefix}{'/' if prefix else ''} at {where}"
        return cls(store, label=label, tmp_dir=settings.tmp_dir, **options)

    # ---- writes ----------------------------------------------------------------------------------

    async def put_file(self, key: str, src: Path) -> int:
        """Upload `src` under `key` (multipart above the part size) and delete `src`; its size."""
        check_key(key)
        size = (await asyncio.to_thread(src.stat)).st_size
        await obstore.put_async(
            self.store, key, src, chunk_size=self.part_size, max_concurrency=PART_CONCURRENCY
        )
        await asyncio.to_thread(src.unlink, True)
        return size

    async def put_files(self, items: list[tuple[str, Path]]) -> list[int | BaseException]:
        """Upload several files, a few at a time; each result is its size or the error that stopped it."""
        gate = asyncio.Semaphore(PUT_PARALLEL)

        async def one(key: str, src: Path) -> int:
            async with gate:
                return await self.put_file(key, src)

        outcomes = await asyncio.gather(*(one(k, p) for k, p in items), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation, not a failed upload
        return list(outcomes)

    async def delete(self, key: str) -> None:
        check_key(key)
        # S3 answers a DELETE of a missing key with success, as the local store ignores a missing file.
        await obstore.delete_async(self.store, key)

    # ---- reads -------------------------------------------------------------------------------------

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """`length` bytes from `offset` (to the end when None): one ranged GET. FileNotFoundError
        (obstore's NotFoundError is one) when there is no such object."""
        check_key(key)
        if length is None:
            result = await obstore.get_async(self.store, key, options={"range": {"offset": offset}})
            return bytes(await result.bytes_async())
        if length <= 0:
            return b""
        return bytes(await obstore.get_range_async(self.store, key, start=offset, length=length))

    async def size(self, key: str) -> int:
        check_key(key)
        return int((await obstore.head_async(self.store, key))["size"])

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        """The whole object in ranged pieces, the next one fetched while the last is being sent."""
        size = await self.size(key)
        starts = range(0, size, READ_PIECE)
        ahead: asyncio.Task[bytes] | None = None
        try:
            for i, start in enumerate(starts):
                piece = (
                    await ahead
                    if ahead is not None
                    else await self.read(key, start, min(READ_PIECE, size - start))
                )
                ahead = None
                if i + 1 < len(starts):
                    nxt = starts[i + 1]
                    ahead = asyncio.ensure_future(self.read(key, nxt, min(READ_PIECE, size - nxt)))
                yield piece
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        """The object downloaded to a temporary file under the data folder's tmp/, removed afterwards."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-", suffix=".dcm")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for piece in self.chunks(key):
                    await asyncio.to_thread(fh.write, piece)
            yield path
        finally:
            await asyncio.to_thread(path.unlink, True)

    # ---- health ------------------------------------------------------------------------------------

    async def check(self, *, write: bool = False) -> None:
        """Raise BlobStoreUnavailable (one line) unless the bucket answers.

        With `write` (at start): a listing, which fails on a missing bucket and on refused credentials
        (a HEAD of a missing key cannot tell those apart), then the readiness marker written, so
        credentials that may read but not write are found too. Without (readiness, polled every second
        or two by a load balancer): a HEAD of that marker, the cheapest request S3 bills."""
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                if write:
                    await obstore.list_with_delimiter_async(self.store, "_readiness/")
                    await obstore.put_async(self.store, READY_MARKER, b"dicomweb readiness marker\n")
                else:
                    await obstore.head_async(self.store, READY_MARKER)
        except TimeoutError:
            raise BlobStoreUnavailable(f"{self.label}: no answer within {CHECK_SECONDS:.0f} s") from None
        except FileNotFoundError:
            raise BlobStoreUnavailable(
                f"{self.label}: the readiness marker {READY_MARKER} is gone (bucket emptied or deleted?)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - obstore's errors, told in one line
            raise BlobStoreUnavailable(f"{self.label}: {short_reason(exc)}") from None

    async def close(self) -> None:
        return None


# S3 error codes an operator should read as such.
_CODES = {
    "NoSuchBucket": "no such bucket",
    "InvalidAccessKeyId": "the access key is not known to the service (wrong AWS_ACCESS_KEY_ID?)",
    "SignatureDoesNotMatch": "the secret key does not match (wrong AWS_SECRET_ACCESS_KEY?)",
    "AccessDenied": "access denied to these credentials",
    "InvalidBucketName": "invalid bucket name",
    "PermanentRedirect": "the bucket is in another region (set AWS_REGION)",
    "AuthorizationHeaderMalformed": "the request was signed for the wrong region (set AWS_REGION)",
}


def without_userinfo(url: str) -> str:
    """`url` without a user name or password (http://user:secret@host:9000 -> http://host:9000)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def short_reason(exc: BaseException) -> str:
    """One line from one of obstore's (long, multi-line) errors."""
    text = str(exc)
    if code := re.search(r"<Code>([A-Za-z]+)</Code>", text):
        return f"{_CODES.get(code.group(1), 'refused')} ({code.group(1)})"
    if "error sending request" in text or "Connection refused" in text or "dns error" in text:
        return "cannot connect to the endpoint"
    if status := re.search(r"status code: (\d{3}[^:\n]*)", text):
        return f"answered {status.group(1).strip()}"
    if "credential" in text.lower():
        return "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a role)"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]
