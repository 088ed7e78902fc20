"""Settings shared by the CLI, the server and scripts.

Every setting has an embedded default (SQLite and a folder under ``data_dir``) and can come from an
environment variable, so a container or a systemd unit needs no config file. A malformed value raises
SettingError naming the variable, so the command line can answer with one line instead of a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class SettingError(ValueError):
    """A setting from the environment cannot be used; str() names the variable and the value."""


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    """Integer variable `name`, or `default` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not a whole number") from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingError(f"{name}={value} is out of range (expected {bounds})")
    return number


def env_bool(name: str, default: bool) -> bool:
    """Boolean variable `name` (1/0, true/false, yes/no, on/off), or `default` when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in TRUE_WORDS | FALSE_WORDS:
        return value in TRUE_WORDS
    raise SettingError(f"{name}={value!r} is not one of 1/0, true/false, yes/no, on/off")


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """Variable `name` if it is one of `choices` (case-insensitive), or `default` when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in choices:
        raise SettingError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./dicomweb-data")
    # SQLAlchemy URL; empty means an SQLite file inside data_dir.
    database_url: str = ""
    # Root of the DICOMweb API in URLs.
    root: str = "/dicom-web"
    # Public base URL used in RetrieveURL / BulkDataURI when behind a proxy; empty = from the request.
    public_url: str = ""
    # Largest accepted request body (bytes) and part count: absurd uploads are refused, not buffered.
    max_upload_bytes: int = 8 * 1024**3
    max_parts: int = 20000
    # Binary values of more bytes than this become BulkDataURIs in metadata (computed at ingest); some
    # attributes (palette and other lookup tables, overlays, waveforms...) always do.
    bulk_data_threshold: int = 1024
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    workers: int = 0  # codec worker threads; 0 = one per core
    # Memory for recently decoded (uncompressed) frames.
    decoded_cache_bytes: int = 256 * 1024**2
    # Disk for the uncompressed frames of recently made masters (storage/readahead.py); 0 turns it off.
    decoded_disk_cache_bytes: int = 2048 * 1024**2
    # One line per request (method, path without its query string, status, bytes, time, client).
    access_log: bool = True

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def sql_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def settings_from_env() -> Settings:
    """Settings from DICOMWEB_* variables; raises SettingError for a malformed one."""
    env = os.environ
    origins = tuple(o.strip() for o in env.get("DICOMWEB_CORS_ORIGINS", "").split(",") if o.strip())
    return Settings(
        data_dir=Path(env.get("DICOMWEB_DATA", "./dicomweb-data")),
        database_url=env.get("DICOMWEB_DATABASE_URL", ""),
        root="/" + env.get("DICOMWEB_ROOT", "/dicom-web").strip("/"),
        public_url=env.get("DICOMWEB_PUBLIC_URL", "").rstrip("/"),
        max_upload_bytes=env_int("DICOMWEB_MAX_UPLOAD_BYTES", 8 * 1024**3, minimum=1),
        max_parts=env_int("DICOMWEB_MAX_PARTS", 20000, minimum=1),
        bulk_data_threshold=env_int("DICOMWEB_BULKDATA_THRESHOLD", 1024),
        cors_origins=origins,
        workers=env_int("DICOMWEB_WORKERS", 0),
        decoded_cache_bytes=env_int("DICOMWEB_DECODED_CACHE_MB", 256) * 1024**2,
        decoded_disk_cache_bytes=env_int("DICOMWEB_DECODED_DISK_CACHE_MB", 2048) * 1024**2,
        access_log=env_bool("DICOMWEB_ACCESS_LOG", True),
    )
