"""Command line: `dicomweb serve`, `dicomweb import`, `dicomweb verify` (and `apikey`, `stats`).

Each option falls back to an environment variable (named in --help), then to a built-in default. A
malformed value, from either, is one line on stderr and exit status 2, never a traceback; `--help` reads
no environment value, so it works whatever the environment holds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from dicomweb.static_sites import site_notes
from storage import DEFAULTS, LOG_LEVELS, SettingError, Settings, check_blob_url, settings_from_env

if TYPE_CHECKING:
    from storage import Archive

DISTRIBUTION = "dicomweb-progressive"
TRACE = 5  # uvicorn's level below debug
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class CommandError(Exception):
    """The command cannot go on; str() is the one line printed, `status` the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def fail(message: str, status: int) -> int:
    """Print one line on stderr, argparse's way, and give the exit status."""
    print(f"dicomweb: error: {message}", file=sys.stderr)
    return status


# ---- settings ------------------------------------------------------------------------------------


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment settings with the command line's overrides; raises SettingError."""
    root = getattr(args, "root", None)
    settings = settings_from_env().with_overrides(
        data_dir=Path(args.data) if args.data else None,
        database_url=args.database_url,
        blob_url=check_blob_url(args.blob_url) if getattr(args, "blob_url", None) else None,
        root="/" + root.strip("/") if root else None,
        access_log=getattr(args, "access_log", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        log_level=getattr(args, "log_level", None),
    )
    index_label(settings)  # a malformed database URL is a setting error, not a traceback at start-up
    return settings


def index_label(settings: Settings) -> str:
    """What kind of index, and where, never with the password of a database URL."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    if not settings.database_url:
        return f"SQLite {(settings.data_dir / 'index.sqlite').resolve()}"
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise SettingError("--database-url (or DICOMWEB_DATABASE_URL) is not a database URL") from None
    kind = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(
        url.get_backend_name(), url.get_backend_name()
    )
    return f"{kind} {url.render_as_string(hide_password=True)}"


def blob_label(settings: Settings) -> str:
    """Where blobs are kept: a folder, or an S3 bucket and prefix at an endpoint."""
    if settings.s3_location is None:
        return str(settings.blob_dir.resolve())
    bucket, prefix = settings.s3_location
    where = settings.s3_endpoint or f"AWS {settings.s3_region or 'us-east-1'}"
    return f"S3 s3://{bucket}/{prefix} at {where}"


def codec_stack() -> str:
    """The codec versions, or CommandError with the reason. Quietly: glymur's warning about a library
    it cannot load would add lines that the error's one line already says."""
    from storage import CodecStackError, check_codec_stack

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return check_codec_stack()
        except CodecStackError as exc:
            raise CommandError(str(exc)) from None


async def open_archive(
    settings: Settings, *, start_masters: bool, parser_processes: int | None = None
) -> Archive:
    """The opened archive, or CommandError saying which folder or database could not be opened."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage import Archive, BlobStoreUnavailable

    try:
        archive = Archive(settings)
    except BlobStoreUnavailable as exc:
        raise CommandError(f"cannot use the blob store: {exc}") from None
    except OSError as exc:
        raise CommandError(f"cannot use the data folder {settings.data_dir}: {exc}") from None
    try:
        await archive.open(start_masters=start_masters, parser_processes=parser_processes)
    except BlobStoreUnavailable as exc:
        await archive.close()
        raise CommandError(f"cannot use the blob store: {exc}") from None
    except (SQLAlchemyError, OSError) as exc:
        await archive.close()
        reason = (str(exc).splitlines() or [""])[0]  # SQLAlchemy adds lines (statement, help link)
        raise CommandError(
            f"cannot open the index ({index_label(settings)}): {type(exc).__name__}: {reason}"
        ) from None
    return archive


async def _try_open(settings: Settings) -> None:
    archive = await open_archive(settings, start_masters=False, parser_processes=1)
    await archive.close()


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1 to 65535)")
    return port


# ---- serve ---------------------------------------------------------------------------------------


def browse_host(host: str) -> str:
    """The host part of a URL an operator can open for a listen address."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def banner(
    settings: Settings,
    host: str,
    port: int,
    codecs: str,
    log_level: str,
    *,
    tls: bool = False,
    auth: str = "",
) -> str:
    """What an operator wants to know at start-up: where to point a browser or viewer, where the data is."""
    base = f"{'https' if tls else 'http'}://{browse_host(host)}:{port}"
    root = settings.root.rstrip("/")
    if not settings.access_log:
        access = "off"
    elif logging.getLogger("dicomweb.access").isEnabledFor(logging.INFO):
        access = "on (method, path without query string, status, bytes, time, client)"
    else:
        access = f"on, but hidden at log level {log_level}"
    demo_note, ohif_note = site_notes()
    rows = [
        ("DICOMweb root", f"{base}{root}"),
        ("viewer demo", f"{base}/viewer-demo/{demo_note}"),
        ("OHIF", f"{base}/ohif/{ohif_note}"),
        ("OHIF one stage", f"{base}/ohif-single/{ohif_note}"),
        ("OHIF progressive", f"{base}/ohif-progressive/{ohif_note}"),
        ("health", f"{base}/healthz"),
        ("readiness", f"{base}/readyz"),
        ("status", f"{base}{root}/status"),
        ("data folder", str(settings.data_dir.resolve())),
        ("index", index_label(settings)),
        ("blobs", blob_label(settings)),
        ("codecs", codecs),
        ("access log", access),
    ]
    if settings.cold_blob_url:
        cold = blob_label(settings.with_overrides(blob_url=settings.cold_blob_url))
        rows.insert(rows.index(("blobs", blob_label(settings))) + 1, ("cold tier blobs", cold))
    if auth:
        rows.append(("access control", auth))
    rows.append(("audit log", {"": "off", "-": "stdout"}.get(settings.audit_log, settings.audit_log)))
    if settings.public_url:
        rows.insert(1, ("public URL", settings.public_url))
    listening = f" (listening on every interface, {host})" if host in ("0.0.0.0", "::", "") else ""
    lines = [f"dicomweb {package_version()} starting on {base}{listening}"]
    lines += [f"  {name:<17} {value}" for name, value in rows]
    return "\n".join(lines)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=TRACE if level == "trace" else level.upper(), format=LOG_FORMAT)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dicomweb.app import create_app
    from dicomweb.serve_security import check_exposure, tls_files, uvicorn_security

    settings = settings_from(args)
    host, port, level = settings.host, settings.port, settings.log_level
    tls = tls_files(args.tls_cert, args.tls_key, (settings.tls_cert, settings.tls_key))
    # Before uvicorn: a broken install or an unreachable database refuses to start with one line, not a
    # lifespan traceback. (The lifespan's codec check then finds this one's result.)
    codecs = codec_stack()
    asyncio.run(_try_open(settings))
    # Open to anyone only on a loopback address, or when asked: exit 2 otherwise (dicomweb/serve_security.py).
    settings, auth_note = check_exposure(settings, host, bool(args.allow_anonymous))
    configure_logging(level)
    print(banner(settings, host, port, codecs, level, tls=bool(tls), auth=auth_note), flush=True)
    # uvicorn's access log prints query strings (patient names in QIDO): ours, in create_app, does not.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=level,
        access_log=False,
        **uvicorn_security(settings, tls),
    )
    return 0


# ---- verify --------------------------------------------------------------------------------------


async def _verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from storage import verify_archive

    archive = await open_archive(settings_from(args), start_masters=False)
    try:
        total = await archive.count_instances()
        with tqdm(total=total, unit="instance", disable=args.quiet) as bar:
            report = await verify_archive(archive, bar.update)
        jobs = await archive.job_counts()
    finally:
        await archive.close()
    print(
        f"checked {report.instances} instance(s): {report.masters} master(s) decoded bit-exact, "
        f"{jobs.get('pending', 0)} waiting for a master, {jobs.get('kept', 0)} kept as received; "
        f"{len(report.problems)} problem(s)"
    )
    if report.kept:
        print("kept as received, by reason:")
        for reason, n in report.kept_reasons.items():  # most frequent first, then by reason
            print(f"  {n:6d}  {reason}")
    for problem in report.problems:
        print(f"  {problem}")
    return 0 if report.ok else 1


def verify(args: argparse.Namespace) -> int:
    return asyncio.run(_verify(args))


def import_files(args: argparse.Namespace) -> int:
    from dicomweb.cli_import import run_import

    return asyncio.run(run_import(args, settings_from(args)))


# ---- the parser ----------------------------------------------------------------------------------


def _storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        metavar="DIR",
        help="data folder: SQLite index, blobs and uploads in progress "
        "(env DICOMWEB_DATA; default ./dicomweb-data)",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy URL of the index, e.g. postgresql+asyncpg://user:pw@host/db "
        "(env DICOMWEB_DATABASE_URL; default: SQLite in the data folder)",
    )
    p.add_argument(
        "--blob-url",
        metavar="URL",
        help="where blobs are kept: s3://BUCKET/PREFIX for an S3-compatible service (endpoint, "
        "region and credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY...; install with pip install '.[s3]'), or a folder "
        "(env DICOMWEB_BLOB_URL; default: blobs/ in the data folder)",
    )


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP server",
        description="Run the DICOMweb server (QIDO-RS, WADO-RS, STOW-RS) and the viewer pages.",
    )
    p.add_argument(
        "--host", help="listen address; 0.0.0.0 for every interface (env DICOMWEB_HOST; default 127.0.0.1)"
    )
    p.add_argument("--port", type=port_number, help="listen port (env DICOMWEB_PORT; default 8000)")
    _storage_options(p)
    p.add_argument(
        "--root",
        metavar="PATH",
        help=f"URL path of the DICOMweb API (env DICOMWEB_ROOT; default {DEFAULTS.root})",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        help="least important messages shown; the access log is at info "
        "(env DICOMWEB_LOG_LEVEL; default info)",
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one line per request: method, path without its query string (no patient data), "
        "status, bytes, time, client (env DICOMWEB_ACCESS_LOG=0 turns it off; default on)",
    )
    p.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="serve without authentication on a non-loopback address when no OIDC issuer and no API "
        "key is configured (env DICOMWEB_ALLOW_ANONYMOUS=1; default: refuse to start)",
    )
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve HTTPS with this certificate chain (PEM) (env DICOMWEB_TLS_CERT; needs --tls-key)",
    )
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM) (env DICOMWEB_TLS_KEY)")
    p.set_defaults(func=serve)


def _import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="store DICOM files and folders through the ingest path",
        description="Store DICOM files and folders (recursively) through the same ingest "
        "path as STOW-RS, then make their masters. Exit status: 0 when every "
        "file was stored, 1 when some were refused (or the import could not "
        "start), 2 for a malformed setting.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM file or folder")
    _storage_options(p)
    p.add_argument(
        "--report",
        metavar="FILE",
        type=Path,
        help="write every file's outcome to FILE as CSV: path, outcome, SOP Instance UID, "
        "reason, master, master reason, parser warnings",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--no-masters",
        action="store_true",
        help="store only; leave making masters to the server's background queue",
    )
    p.add_argument(
        "--no-ladders",
        action="store_true",
        help="make masters but leave measuring their fidelity ladders (what previews, thumbnails and "
        "lifecycle rules choose by) to the server, which does it when no master waits",
    )
    p.set_defaults(func=import_files)


def _verify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="re-check every blob's checksum and that every master decodes bit-exact",
        description="Re-check every blob against its checksum and every master against the "
        "pixels it was made from; list why instances were kept as received. "
        "Exit status 0 when no problem was found, 1 otherwise.",
    )
    _storage_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=verify)


def apikey(args: argparse.Namespace) -> int:
    from dicomweb.cli_apikey import ApiKeyCommandError, run

    try:
        return run(args, settings_from(args))
    except ApiKeyCommandError as exc:
        raise CommandError(str(exc)) from None


def _apikey_parser(sub: argparse._SubParsersAction) -> None:
    from dicomweb.cli_apikey import add_parser

    add_parser(sub, _storage_options, apikey)


def stats(args: argparse.Namespace) -> int:
    from dicomweb.cli_stats import run

    return run(args, settings_from(args))


def _stats_parser(sub: argparse._SubParsersAction) -> None:
    from dicomweb.cli_stats import add_parser

    add_parser(sub, _storage_options, stats)


def lifecycle(args: argparse.Namespace) -> int:
    from dicomweb.cli_lifecycle import run, run_lifecycle

    settings = settings_from(args)
    return run(lambda: run_lifecycle(args, settings))


def qa(args: argparse.Namespace) -> int:
    from dicomweb.cli_lifecycle import run, run_qa

    settings = settings_from(args)
    return run(lambda: run_qa(args, settings))


def _lifecycle_parsers(sub: argparse._SubParsersAction) -> None:
    from dicomweb.cli_lifecycle import add_parsers

    add_parsers(sub, _storage_options, lifecycle, qa)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomweb", description="DICOMweb server with progressive JPEG 2000"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _serve_parser,
        _import_parser,
        _verify_parser,
        _apikey_parser,
        _stats_parser,
        _lifecycle_parsers,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        status = command(args)
    except SettingError as exc:
        status = fail(str(exc), 2)
    except CommandError as exc:
        status = fail(str(exc), exc.status)
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)
