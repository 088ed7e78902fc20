"""Blob store: immutable objects addressed by key.

The local store is the embedded default. Writes are atomic (temporary name, fsync, rename, fsync of the
folder) so a crash never leaves a half object under a real key. The S3 store (storage/s3_blobs.py) does
the same operations on a bucket. Nothing outside this module and that one knows where blobs lie: code that
needs a file (a codec, pydicom) asks for one with `async with blobs.local_file(key) as path`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from storage.config import Settings


class BlobStore(Protocol):
    # Where the blobs are, for people: a folder, or s3://bucket/prefix at an endpoint.
    label: str

    async def put_file(self, key: str, src: Path) -> int: ...
    async def put_files(self, items: list[tuple[str, Path]]) -> list[int | BaseException]: ...
    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...
    def chunks(self, key: str) -> AsyncIterator[bytes]: ...
    async def delete(self, key: str) -> None: ...
    def local_file(self, key: str) -> contextlib.AbstractAsyncContextManager[Path]: ...
    async def check(self, *, write: bool = False) -> None: ...
    async def close(self) -> None: ...


class BlobStoreUnavailable(Exception):
    """The blob store cannot be used (unreachable, refused credentials, no such bucket); str() is one line."""


def open_blob_store(settings: Settings, url: str | None = None) -> BlobStore:
    """The store `url` names (`settings.blob_url` when None): an S3 bucket at the endpoint the settings
    give, or a folder (the data folder's blobs/ for an empty URL). The cold tier's store is opened with
    `settings.cold_blob_url`."""
    if url is not None:
        settings = dataclasses.replace(settings, blob_url=url)
    if settings.s3_location is None:
        return LocalBlobStore(settings.blob_dir)
    try:
        from storage.s3_blobs import S3BlobStore
    except ImportError as exc:
        raise BlobStoreUnavailable(
            f"{settings.blob_url} needs the S3 client: pip install '.[s3]' ({exc})"
        ) from None
    return S3BlobStore.from_settings(settings)


# Files of one put_files call written in parallel.
PUT_PARALLEL = 4
# Streamed reads come in pieces of this size.
CHUNK = 1 << 20


def new_blob_key(series_uid: str, sop_uid: str) -> str:
    """A fresh key for a version of an instance. One folder per series (so a series uploaded together
    costs one folder sync), spread over 256 parents. Each stored version gets its own key, so storing an
    instance again never touches the blob its current index row points at; the old blob is deleted once
    the new row is committed."""
    h = hashlib.sha1(series_uid.encode(), usedforsecurity=False).hexdigest()
    return f"{h[:2]}/{series_uid}/{sop_uid}.{time.time_ns():x}.dcm"


def check_key(key: str) -> str:
    """`key` if it is a relative path without . or .. parts; else ValueError (keys come from new_blob_key,
    which builds them from validated UIDs: this is the last guard)."""
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"bad blob key {key!r}")
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    def __init__(self, root: Path, io_threads: int = 16) -> None:
        self.root = root
        self.label = str(root.resolve())
        self.root.mkdir(parents=True, exist_ok=True)
        # fsync waits on the disk, not the CPU: many of them in flight keep uploads moving.
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="blob-io")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def local_path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        """The blob as a file, for code that needs one: here, the file itself (FileNotFoundError when the
        blob does not exist)."""
        path = self.local_path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no blob {key}")
        yield path

    async def check(self, *, write: bool = False) -> None:
        """Raise BlobStoreUnavailable if the folder cannot be used (listed, or with `write`, written)."""
        try:
            await asyncio.to_thread(os.listdir, self.root)
            if write:
                probe = self.root / f".probe.{os.getpid()}.{time.time_ns():x}"
                await asyncio.to_thread(probe.write_bytes, b"")
                await asyncio.to_thread(probe.unlink)
        except OSError as exc:
            raise BlobStoreUnavailable(f"cannot use the blob folder {self.root}: {exc}") from None

    async def close(self) -> None:
        self._io.shutdown(wait=False)

    def _place(self, key: str, src: Path) -> int:
        """Move (or copy) `src` to a temporary name, fsync it, rename it to `key`. `src` is consumed."""
        dest = self.local_path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        try:
            os.rename(src, tmp)  # same file system: no copy, and nothing left to delete afterwards
        except OSError:
            shutil.copyfile(src, tmp)
            os.unlink(src)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        return dest.stat().st_size

    def _place_each(self, items: list[tuple[str, Path]]) -> list[int | BaseException]:
        results: list[int | BaseException] = []
        for key, src in items:
            try:
                results.append(self._place(key, src))
            except OSError as exc:
                results.append(exc)
        return results

    async def put_files(self, items: list[tuple[str, Path]]) -> list[int | BaseException]:
        """Store several files durably (consuming them); each result is its size or the error that stopped it.

        Files are written a few at a time in parallel: concurrent fsyncs share journal commits, and a
        few threads each taking a share wake far less often than a thread per file. Then each folder they
        went into is fsynced once, so a series uploaded together costs one directory sync, not one per file.
        """
        if not items:
            return []
        n = min(len(items), PUT_PARALLEL)
        bounds = [round(i * len(items) / n) for i in range(n + 1)]
        chunks = await asyncio.gather(
            *(self._run(self._place_each, items[bounds[i] : bounds[i + 1]]) for i in range(n))
        )
        results = [r for chunk in chunks for r in chunk]
        folders = sorted({self.local_path(key).parent for key, _ in items})
        synced = await asyncio.gather(*(self._run(_fsync_dir, d) for d in folders), return_exceptions=True)
        for folder, outcome in zip(folders, synced, strict=True):
            if isinstance(outcome, BaseException):
                for i, (key, _) in enumerate(items):
                    if self.local_path(key).parent == folder:
                        results[i] = outcome
        return results

    async def put_file(self, key: str, src: Path) -> int:
        (result,) = await self.put_files([(key, src)])
        if isinstance(result, BaseException):
            raise result
        return result

    def read_sync(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with open(self.local_path(key), "rb") as fh:
            if length is None:
                fh.seek(offset)
                return fh.read()
            return os.pread(fh.fileno(), length, offset)

    async def read(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        # Small reads from the page cache cost less than a thread hop.
        if length is not None and length <= 1 << 20:
            return self.read_sync(key, offset, length)
        return await asyncio.to_thread(self.read_sync, key, offset, length)

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        """The whole blob, in pieces (a response streams it without holding it in memory)."""
        fh = await asyncio.to_thread(open, self.local_path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                yield chunk
        finally:
            fh.close()

    def _delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.local_path(key))

    async def delete(self, key: str) -> None:
        # In a thread: an unlink waits for the file system journal, which fsyncs keep busy.
        await self._run(self._delete, key)
