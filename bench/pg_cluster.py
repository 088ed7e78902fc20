"""A throw-away PostgreSQL cluster (Debian's server binaries) on a loopback port: for the benchmarks, the
cluster script and the tests."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from bench.processes import free_port


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start(base: Path, port: int, settings: tuple[str, ...] = ()) -> str:
    """initdb and start a cluster in `base` (owned by postgres when run as root) on `port`, with
    ``fsync=off`` (thrown away afterwards) and `settings`; the SQLAlchemy URL (asyncpg) of its database."""
    pg = bin_dir()
    if pg is None:
        raise RuntimeError("PostgreSQL server binaries missing (apt-get install postgresql)")
    data, sock = base / "data", base / "sock"
    base.mkdir(parents=True, exist_ok=True)
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    init = subprocess.run(
        _as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]),
        check=False,
        capture_output=True,
        text=True,
    )
    if init.returncode:
        raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
    options = " ".join(
        [f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", *(f"-c {s}" for s in settings)]
    )
    (base / "options").write_text(options)
    resume(base)
    subprocess.run(
        [str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "dicomweb"],
        check=True,
        capture_output=True,
    )
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/dicomweb"


def resume(base: Path) -> None:
    """Start the cluster in `base` again, as `start` first started it."""
    pg = bin_dir()
    assert pg is not None
    subprocess.run(
        _as_postgres(
            [
                str(pg / "pg_ctl"),
                "-D",
                str(base / "data"),
                "-l",
                str(base / "log"),
                "-w",
                "start",
                "-o",
                (base / "options").read_text(),
            ]
        ),
        check=True,
        capture_output=True,
    )


def stop(base: Path) -> None:
    """Stop the cluster in `base`, if one was started there."""
    pg = bin_dir()
    if pg is not None and (base / "data").is_dir():
        subprocess.run(
            _as_postgres([str(pg / "pg_ctl"), "-D", str(base / "data"), "-m", "fast", "stop"]),
            check=False,
            capture_output=True,
        )


def vacuum_analyze(url: str) -> None:
    """VACUUM (ANALYZE) the database behind `url`: the state autovacuum brings a table to some time after a
    bulk load (visibility map set, so index-only scans read no table pages; statistics current). A benchmark
    that loads in minutes what an archive gathers over years measures that state, not the first minute."""
    pg = bin_dir()
    assert pg is not None
    parsed = urlsplit(url)
    subprocess.run(
        [
            str(pg / "vacuumdb"),
            "--analyze",
            "-q",
            "-h",
            parsed.hostname or "127.0.0.1",
            "-p",
            str(parsed.port),
            "-U",
            parsed.username or "postgres",
            parsed.path.lstrip("/"),
        ],
        check=True,
        capture_output=True,
    )


@contextmanager
def running(settings: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield a SQLAlchemy URL (asyncpg) of a fresh database; stop and remove the cluster afterwards.
    Not under pytest's tmp folder: as root that is private to root, and the server runs as postgres."""
    base = Path(tempfile.mkdtemp(prefix="dicomweb-pg-"))
    try:
        yield start(base, free_port(), settings)
    finally:
        stop(base)
        shutil.rmtree(base, ignore_errors=True)
