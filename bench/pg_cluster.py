"""A throw-away PostgreSQL cluster (Debian's server binaries) on a loopback port, for the benchmarks."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.processes import free_port


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def running(settings: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield a SQLAlchemy URL (asyncpg) of a fresh database; stop and remove the cluster afterwards.

    ``fsync=off``: the cluster is thrown away, and the benchmark measures the index, not the disk."""
    pg = bin_dir()
    if pg is None:
        raise RuntimeError("PostgreSQL server binaries missing (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    init = subprocess.run(
        _as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]),
        check=False,
        capture_output=True,
        text=True,
    )
    if init.returncode:
        raise RuntimeError(f"initdb failed: {init.stderr}")
    options = " ".join(
        [f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", *(f"-c {s}" for s in settings)]
    )
    subprocess.run(
        _as_postgres(
            [str(pg / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "start", "-o", options]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "dicomweb"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/dicomweb"
    finally:
        subprocess.run(
            _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)
