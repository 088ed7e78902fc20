"""Settings shared by the CLI, the server and scripts.

Every setting has an embedded default (SQLite and a folder under ``data_dir``) and can come from an
environment variable, so a container or a systemd unit needs no config file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


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
    env = os.environ
    origins = tuple(o.strip() for o in env.get("DICOMWEB_CORS_ORIGINS", "").split(",") if o.strip())
    return Settings(
        data_dir=Path(env.get("DICOMWEB_DATA", "./dicomweb-data")),
        database_url=env.get("DICOMWEB_DATABASE_URL", ""),
        root="/" + env.get("DICOMWEB_ROOT", "/dicom-web").strip("/"),
        public_url=env.get("DICOMWEB_PUBLIC_URL", "").rstrip("/"),
        max_upload_bytes=_env_int("DICOMWEB_MAX_UPLOAD_BYTES", 8 * 1024**3),
        max_parts=_env_int("DICOMWEB_MAX_PARTS", 20000),
        bulk_data_threshold=_env_int("DICOMWEB_BULKDATA_THRESHOLD", 1024),
        cors_origins=origins,
        workers=_env_int("DICOMWEB_WORKERS", 0),
        decoded_cache_bytes=_env_int("DICOMWEB_DECODED_CACHE_MB", 256) * 1024**2,
    )
