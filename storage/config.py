"""Settings shared by the CLI, the server and scripts.

Every setting has an embedded default (SQLite and a folder under ``data_dir``) and can come from an
environment variable, so a container or a systemd unit needs no config file. A malformed value raises
SettingError naming the variable, so the command line can answer with one line instead of a traceback.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from storage.processes import tmp_folder_name

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
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


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    """Number variable `name` (decimals allowed), or `default` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not a number") from None
    if not number >= minimum or number == float("inf"):
        raise SettingError(f"{name}={value} is out of range (expected at least {minimum})")
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
    # Where blobs are kept: s3://BUCKET/PREFIX for an S3-compatible service, or a folder (a path or a
    # file:// URL); empty means the folder blobs/ inside data_dir.
    blob_url: str = ""
    # The S3 service: endpoint (empty: AWS's own for the region) and region, from the standard AWS
    # variables (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL; AWS_REGION or AWS_DEFAULT_REGION). Credentials
    # are not settings: the S3 client takes them from the usual chain (AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY, a web identity token, the container or instance metadata service).
    s3_endpoint: str = ""
    s3_region: str = ""
    # PostgreSQL: connections kept per process, and how long connecting and one statement may take before
    # the request is answered 503 (the database is unreachable) rather than waiting on.
    db_pool_size: int = 10
    db_connect_timeout: float = 5.0
    db_statement_timeout: float = 60.0
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
    # Threads measuring masters' fidelity ladders while no master waits (storage.ladder); None = as many
    # as `workers`; 0 = never in the background (a `/layers` request still measures its instance).
    ladder_workers: int | None = None
    # Memory for recently decoded (uncompressed) frames.
    decoded_cache_bytes: int = 256 * 1024**2
    # Disk for the uncompressed frames of recently made masters (storage/readahead.py); 0 turns it off.
    decoded_disk_cache_bytes: int = 2048 * 1024**2
    # How long a request that needs a master still being made (a cut, HTJ2K) waits for it, after moving
    # it to the front of the queue; then cuts are encoded on the fly from the received frame.
    master_wait_seconds: float = 0.3
    # One line per request (method, path without its query string, status, bytes, time, client).
    access_log: bool = True
    # Where `dicomweb serve` listens, and how much it logs.
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # HTTPS: a PEM certificate chain and its key (both, or neither).
    tls_cert: str = ""
    tls_key: str = ""

    # ---- access control (dicomweb/auth.py) ----
    # OpenID Connect issuer; its keys are found by discovery ({issuer}/.well-known/openid-configuration).
    oidc_issuer: str = ""
    # Expected `aud` of tokens (required when an issuer is set).
    oidc_audience: str = ""
    # Where roles are in a token, as a dotted path (Keycloak: realm_access.roles); they count as scopes.
    oidc_roles_claim: str = "realm_access.roles"
    # The claim listing the access labels a token may see (absent: every study its scopes allow).
    oidc_labels_claim: str = "dicomweb_labels"
    # Clock skew allowed on exp and nbf, seconds.
    oidc_leeway: int = 30
    # Least time between two JWKS fetches caused by an unknown kid: a flood of bad tokens cannot hammer
    # the issuer.
    oidc_jwks_refetch_seconds: float = 30.0
    # Scope names for the four kinds of access.
    scope_read: str = "dicomweb.read"
    scope_write: str = "dicomweb.write"
    scope_delete: str = "dicomweb.delete"
    scope_admin: str = "dicomweb.admin"
    # Serve without authentication when none is configured. The library default (an app built in code) is
    # open, as before; `dicomweb serve` sets it only for a loopback address or --allow-anonymous.
    allow_anonymous: bool = True
    # OIDC client id of the OHIF pages (/ohif/, /ohif-progressive/): with an issuer, OHIF signs users in
    # there itself (authorization code flow with PKCE) and sends their tokens.
    ohif_oidc_client_id: str = ""
    # One JSON line per request that touches patient data: a file path, "-" for stdout, "" for none.
    audit_log: str = ""

    # ---- limits for hostile or slow clients ----
    # Seconds a request body may stall between two chunks before the request gets 408.
    body_timeout: float = 60.0
    # Seconds a client has to send a request's headers before its connection is closed.
    header_timeout: float = 30.0
    # Seconds an idle keep-alive connection is kept open (uvicorn's timeout_keep_alive).
    keep_alive_timeout: int = 5
    # Uploads (STOW) one client address may have in progress at once (429 beyond).
    max_uploads_per_client: int = 8

    # ---- storage economics (issue 16) ----
    # What a terabyte stored for a month costs, for the savings `stats` reports. The default is the list
    # price of Amazon S3 Standard (us-east-1, first 50 TB: USD 0.023 per GB-month), the figure most
    # storage budgets are compared with; set your own (on-premises storage with replicas and backup often
    # costs more).
    price_per_tb_month: float = 23.0
    # The same for the cold tier (DICOMWEB_COLD_BLOB_URL): Amazon S3 Glacier Instant Retrieval's list
    # price, USD 0.004 per GB-month.
    cold_price_per_tb_month: float = 4.0
    currency: str = "USD"
    # Yearly growth of the archive, for the five-year projection (0.2 = 20 % more each year).
    yearly_growth: float = 0.2
    # A second blob store for studies a lifecycle rule moves to the cold tier (a folder, a file:// URL or
    # s3://BUCKET/PREFIX); empty = no cold tier.
    cold_blob_url: str = ""
    # The lifecycle policy (a TOML file of ordered rules), and how often the server applies it on its
    # own (seconds; 0 = only by `dicomweb lifecycle --apply`).
    lifecycle_policy: str = ""
    lifecycle_interval: float = 0.0

    @property
    def s3_location(self) -> tuple[str, str] | None:
        """(bucket, prefix) when blobs are in an S3 bucket, else None."""
        return parse_s3_url(self.blob_url) if self.blob_url.startswith("s3://") else None

    @property
    def blob_dir(self) -> Path:
        """The blob folder, when blobs are kept in a folder."""
        url = self.blob_url
        if not url:
            return self.data_dir / "blobs"
        if url.startswith("file://"):
            return Path(url.removeprefix("file://"))
        return Path(url)

    @property
    def tmp_root(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def tmp_dir(self) -> Path:
        """This process's temporary files (uploads being received, masters and copies being made): a folder
        of its own, so that a server starting on this data folder clears only what dead processes left,
        never the files of a server or command still running on it (storage/processes.py)."""
        return self.tmp_root / tmp_folder_name(os.getpid())

    @property
    def decoded_cache_dir(self) -> Path:
        """Uncompressed frames kept on disk (storage/readahead.py), bounded by decoded_disk_cache_bytes."""
        return self.data_dir / "cache" / "decoded"

    @property
    def htj2k_cache_dir(self) -> Path:
        """Masters transcoded to HTJ2K (storage/archive.py)."""
        return self.data_dir / "cache" / "htj2k"

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
    d = DEFAULTS
    origins = tuple(o.strip() for o in env.get("DICOMWEB_CORS_ORIGINS", "").split(",") if o.strip())
    return Settings(
        data_dir=Path(env.get("DICOMWEB_DATA") or d.data_dir),
        database_url=env.get("DICOMWEB_DATABASE_URL", d.database_url),
        db_pool_size=env_int("DICOMWEB_DB_POOL_SIZE", d.db_pool_size, minimum=1),
        db_connect_timeout=env_int("DICOMWEB_DB_CONNECT_TIMEOUT", int(d.db_connect_timeout), minimum=1),
        db_statement_timeout=env_int("DICOMWEB_DB_STATEMENT_TIMEOUT", int(d.db_statement_timeout), minimum=1),
        blob_url=check_blob_url(env.get("DICOMWEB_BLOB_URL", "").strip() or d.blob_url),
        s3_endpoint=(
            env.get("AWS_ENDPOINT_URL_S3", "").strip()
            or env.get("AWS_ENDPOINT_URL", "").strip()
            or d.s3_endpoint
        ).rstrip("/"),
        s3_region=env.get("AWS_REGION", "").strip()
        or env.get("AWS_DEFAULT_REGION", "").strip()
        or d.s3_region,
        root="/" + (env.get("DICOMWEB_ROOT") or d.root).strip("/"),
        public_url=env.get("DICOMWEB_PUBLIC_URL", d.public_url).rstrip("/"),
        max_upload_bytes=env_int("DICOMWEB_MAX_UPLOAD_BYTES", d.max_upload_bytes, minimum=1),
        max_parts=env_int("DICOMWEB_MAX_PARTS", d.max_parts, minimum=1),
        bulk_data_threshold=env_int("DICOMWEB_BULKDATA_THRESHOLD", d.bulk_data_threshold),
        cors_origins=origins,
        workers=env_int("DICOMWEB_WORKERS", d.workers),
        ladder_workers=env_int("DICOMWEB_LADDER_WORKERS", 0)
        if env.get("DICOMWEB_LADDER_WORKERS", "").strip()
        else d.ladder_workers,
        decoded_cache_bytes=env_int("DICOMWEB_DECODED_CACHE_MB", d.decoded_cache_bytes >> 20) << 20,
        decoded_disk_cache_bytes=env_int("DICOMWEB_DECODED_DISK_CACHE_MB", d.decoded_disk_cache_bytes >> 20)
        << 20,
        master_wait_seconds=env_int(
            "DICOMWEB_MASTER_WAIT_MS", int(d.master_wait_seconds * 1000), maximum=60_000
        )
        / 1000,
        access_log=env_bool("DICOMWEB_ACCESS_LOG", d.access_log),
        host=env.get("DICOMWEB_HOST", "").strip() or d.host,
        port=env_int("DICOMWEB_PORT", d.port, minimum=1, maximum=65535),
        log_level=env_choice("DICOMWEB_LOG_LEVEL", d.log_level, LOG_LEVELS),
        tls_cert=env.get("DICOMWEB_TLS_CERT", "").strip(),
        tls_key=env.get("DICOMWEB_TLS_KEY", "").strip(),
        oidc_issuer=env.get("DICOMWEB_OIDC_ISSUER", "").strip().rstrip("/"),
        oidc_audience=env.get("DICOMWEB_OIDC_AUDIENCE", "").strip(),
        oidc_roles_claim=env.get("DICOMWEB_OIDC_ROLES_CLAIM", "").strip() or d.oidc_roles_claim,
        oidc_labels_claim=env.get("DICOMWEB_OIDC_LABELS_CLAIM", "").strip() or d.oidc_labels_claim,
        oidc_leeway=env_int("DICOMWEB_OIDC_LEEWAY", d.oidc_leeway, maximum=600),
        oidc_jwks_refetch_seconds=env_int(
            "DICOMWEB_OIDC_JWKS_REFETCH_SECONDS", int(d.oidc_jwks_refetch_seconds), maximum=86400
        ),
        scope_read=env_word("DICOMWEB_SCOPE_READ", d.scope_read),
        scope_write=env_word("DICOMWEB_SCOPE_WRITE", d.scope_write),
        scope_delete=env_word("DICOMWEB_SCOPE_DELETE", d.scope_delete),
        scope_admin=env_word("DICOMWEB_SCOPE_ADMIN", d.scope_admin),
        ohif_oidc_client_id=env.get("DICOMWEB_OHIF_OIDC_CLIENT_ID", "").strip(),
        # Unlike an app built in code (open, as before), the environment's default is closed: `serve`
        # opens it only on a loopback address.
        allow_anonymous=env_bool("DICOMWEB_ALLOW_ANONYMOUS", False),
        audit_log=env.get("DICOMWEB_AUDIT_LOG", "").strip(),
        body_timeout=env_int("DICOMWEB_BODY_TIMEOUT", int(d.body_timeout), minimum=1),
        header_timeout=env_int("DICOMWEB_HEADER_TIMEOUT", int(d.header_timeout), minimum=1),
        keep_alive_timeout=env_int("DICOMWEB_KEEP_ALIVE_TIMEOUT", d.keep_alive_timeout, minimum=1),
        max_uploads_per_client=env_int(
            "DICOMWEB_MAX_UPLOADS_PER_CLIENT", d.max_uploads_per_client, minimum=1
        ),
        price_per_tb_month=env_float("DICOMWEB_PRICE_PER_TB_MONTH", d.price_per_tb_month),
        cold_price_per_tb_month=env_float("DICOMWEB_COLD_PRICE_PER_TB_MONTH", d.cold_price_per_tb_month),
        currency=env_word("DICOMWEB_CURRENCY", d.currency),
        yearly_growth=env_float("DICOMWEB_YEARLY_GROWTH_PERCENT", d.yearly_growth * 100) / 100,
        cold_blob_url=check_blob_url(env.get("DICOMWEB_COLD_BLOB_URL", "").strip() or d.cold_blob_url),
        lifecycle_policy=env.get("DICOMWEB_LIFECYCLE", "").strip() or d.lifecycle_policy,
        lifecycle_interval=env_float("DICOMWEB_LIFECYCLE_INTERVAL", d.lifecycle_interval),
    )


# S3 bucket names: 3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter
# or digit (AWS's rules; MinIO and Ceph follow them).
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://BUCKET/PREFIX; SettingError if it is malformed."""
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not BUCKET_NAME.fullmatch(bucket):
        raise SettingError(f"blob URL {url!r}: {bucket!r} is not an S3 bucket name")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise SettingError(f"blob URL {url!r}: the prefix has an empty, . or .. part")
    return bucket, prefix


def check_blob_url(url: str) -> str:
    """`url` if it names a blob store this server can use (s3://, file://, or a path); else SettingError."""
    if url.startswith("s3://"):
        parse_s3_url(url)
    elif "://" in url and not url.startswith("file://"):
        raise SettingError(f"blob URL {url!r}: use s3://BUCKET/PREFIX, a folder path or a file:// URL")
    return url


def env_word(name: str, default: str) -> str:
    """A variable holding one word (no spaces: a scope name), or `default` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if any(c.isspace() for c in value):
        raise SettingError(f"{name}={value!r} must be one word")
    return value


DEFAULTS = Settings()


# ---- where installed files are looked for (read on each call: a test or a script may change them) ----


def openjpeg_library_override() -> Path | None:
    """DICOMWEB_OPENJPEG: the libopenjp2 to load instead of the one bundled with Pillow."""
    value = os.environ.get("DICOMWEB_OPENJPEG", "")
    return Path(value) if value else None


def viewer_demo_dir_override() -> Path | None:
    """DICOMWEB_VIEWER_DEMO_DIR: a folder laid out like viewer-demo/ (npm assets, OHIF, web pages)."""
    value = os.environ.get("DICOMWEB_VIEWER_DEMO_DIR", "")
    return Path(value) if value else None


def ohif_dist_override() -> Path | None:
    """DICOMWEB_OHIF_DIST: a prebuilt OHIF to serve instead of the one the setup script installed."""
    value = os.environ.get("DICOMWEB_OHIF_DIST", "")
    return Path(value) if value else None


def user_data_home() -> Path | None:
    """${XDG_DATA_HOME:-~/.local/share} (a relative XDG_DATA_HOME is ignored, as the XDG spec says);
    None for a user without a home folder."""
    base = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(base):
        return Path(base)
    try:
        return Path.home() / ".local" / "share"
    except RuntimeError:
        return None
