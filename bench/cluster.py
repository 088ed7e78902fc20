"""The scale-out topology on one machine, without containers: a temporary PostgreSQL cluster (Debian's
binaries), moto's standalone S3 server, N `dicomweb serve` replicas sharing them, and Debian's HAProxy in
front (round robin, health check on /readyz). deploy/compose.yaml is the same topology in containers
(MinIO in place of moto).

Used by the tests (tests/cluster/), by bench/cluster_bench.py, and from the shell:

    python -m bench.cluster up --dir /tmp/dicomweb-cluster     # prints the URLs, leaves it running
    python -m bench.cluster down --dir /tmp/dicomweb-cluster   # stops everything, removes the folder

(scripts/cluster.sh up|down does the same.) Every process listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import pg_cluster
from bench.processes import free_port, log_tail

REPO_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "dicomweb"
PREFIX = "archive"
# moto accepts any credentials; these are what the replicas and the tests sign with.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "cluster-test",
    "AWS_SECRET_ACCESS_KEY": "cluster-test-secret",
    "AWS_REGION": "us-east-1",
}


# ---- PostgreSQL ------------------------------------------------------------------------------------


# ---- processes -------------------------------------------------------------------------------------


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("ab") as fh:
        # Its own session: stopping it ends its children (parser processes) too, and it outlives
        # `bench.cluster up`.
        return subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )


def kill_group(pid: int, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
    """Signal the process group `pid` leads, and wait (then SIGKILL) until its leader is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        except ChildProcessError:  # not our child (`down` from another shell): poll its existence
            if not Path(f"/proc/{pid}").exists():
                break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{url}: process exited ({proc.returncode})\n{log_tail(log, 20) if log else ''}"
            )
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s ({last})\n{log_tail(log, 20) if log else ''}")


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3  # comes with moto[server], the test extra

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_REGION"],
    )
    s3.create_bucket(Bucket=bucket)


def start_s3_server(base: Path) -> tuple[str, subprocess.Popen]:
    """moto's standalone S3 server on a free loopback port, with the bucket BUCKET; (endpoint, process)."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = base / "s3.log"
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    try:
        _wait_http(f"{endpoint}/moto-api/", 30, proc, log)
        create_bucket(endpoint, BUCKET)
    except BaseException:
        kill_group(proc.pid)
        raise
    return endpoint, proc


def haproxy_config(bind: str, servers: list[str], stats_bind: str, *, compose: bool = False) -> str:
    """Round robin over the replicas (`servers`, host:port); one is taken out after two failed /readyz
    checks a second apart (each allowed 5 s), and a request whose connection to a dead replica fails is
    sent to another (redispatch). With `compose`, replicas are found by name through Docker's DNS, again
    when a container comes back with a new address (deploy/haproxy.cfg is this, made by
    `python -m bench.cluster haproxy-config`)."""
    resolvers = "\nresolvers docker\n    nameserver dns 127.0.0.11:53\n    hold valid 5s\n" if compose else ""
    extra = " resolvers docker init-addr last,libc,none" if compose else ""
    lines = "\n".join(f"    server r{i + 1} {addr} check{extra}" for i, addr in enumerate(servers))
    return f"""# Generated by bench/cluster.py (haproxy_config), for the tests and deploy/compose.yaml.
global
    maxconn 4096
{resolvers}
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    timeout queue 60s
    retries 3
    option redispatch 1
    option forwardfor

frontend dicomweb
    bind {bind}
    default_backend replicas

listen stats
    bind {stats_bind}
    stats enable
    stats uri /stats

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    # Without `timeout check` a check must answer within `inter`: a busy replica would flap.
    timeout check 5s
    default-server inter 1s fall 2 rise 1
{lines}
"""


COMPOSE_HAPROXY = {
    "bind": "*:8080",
    "servers": ["replica1:8000", "replica2:8000"],
    "stats_bind": "127.0.0.1:8404",
}


@dataclass
class Replica:
    port: int
    data: Path
    log: Path
    proc: subprocess.Popen | None = None
    pid: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    """PostgreSQL + moto S3 + `replicas` servers + HAProxy, under `base` (a fresh temporary folder by
    default)."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dicomweb-cluster-")))
    replicas: int = 2
    # Extra environment for the replicas (e.g. DICOMWEB_WORKERS).
    env: dict[str, str] = field(default_factory=dict)
    database_url: str = ""
    s3_endpoint: str = ""
    blob_url: str = f"s3://{BUCKET}/{PREFIX}"
    port: int = 0  # HAProxy's
    stats_port: int = 0  # HAProxy's statistics page (CSV at /stats;csv)
    nodes: list[Replica] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # moto, haproxy
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The load balancer: what clients use."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def root(self) -> str:
        return f"{self.url}/dicom-web"

    def cluster_env(self) -> dict[str, str]:
        """The variables that make a server a replica of this cluster (deploy/compose.yaml sets the same)."""
        return {
            **S3_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "DICOMWEB_DATABASE_URL": self.database_url,
            "DICOMWEB_BLOB_URL": self.blob_url,
            # Behind the balancer every client has its address: a per-client cap would be one for all.
            "DICOMWEB_MAX_UPLOADS_PER_CLIENT": "256",
        }

    def replica_env(self) -> dict[str, str]:
        """What a replica (or a `dicomweb verify`/`import` on the same archive) needs in its environment."""
        return {
            **os.environ,
            **self.cluster_env(),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            **self.env,
        }

    def start(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # mkdtemp's 0700 would keep the postgres user out of pg/
        pg_port = free_port()
        self.database_url = pg_cluster.start(self.base / "pg", pg_port, ("max_connections=200",))
        self.s3_endpoint, moto = start_s3_server(self.base)
        self._procs["s3"], self.pids["s3"] = moto, moto.pid
        for i in range(self.replicas):
            self.nodes.append(
                Replica(free_port(), self.base / f"replica{i + 1}", self.base / f"replica{i + 1}.log")
            )
        # One at a time: the first creates the schema (before migrations under a lock exist, two replicas
        # creating the same tables at once would collide).
        for i in range(self.replicas):
            self.start_replica(i)
        self.port = free_port()
        cfg = self.base / "haproxy.cfg"
        self.stats_port = free_port()
        cfg.write_text(
            haproxy_config(
                f"127.0.0.1:{self.port}",
                [f"127.0.0.1:{n.port}" for n in self.nodes],
                f"127.0.0.1:{self.stats_port}",
            )
        )
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(haproxy).exists():
            raise RuntimeError("HAProxy is missing: apt-get install haproxy")
        log = self.base / "haproxy.log"
        proc = _spawn([haproxy, "-f", str(cfg), "-db"], log)
        self._procs["haproxy"], self.pids["haproxy"] = proc, proc.pid
        _wait_http(f"{self.url}/readyz", 30, proc, log)
        self.wait_balanced()

    def start_replica(self, i: int, timeout: float = 90) -> None:
        node = self.nodes[i]
        node.data.mkdir(parents=True, exist_ok=True)
        node.proc = _spawn(
            [
                sys.executable,
                "-m",
                "dicomweb",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(node.port),
                "--data",
                str(node.data),
                "--log-level",
                "warning",
            ],
            node.log,
            self.replica_env(),
        )
        node.pid = node.proc.pid
        _wait_http(f"{node.base}/readyz", timeout, node.proc, node.log)

    def kill_replica(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill replica `i` and its children at once (SIGKILL: no shutdown, as a crash or an OOM kill)."""
        node = self.nodes[i]
        if node.pid:
            kill_group(node.pid, sig)
            node.proc, node.pid = None, 0

    def backend_states(self) -> dict[str, str]:
        """Each replica's state as HAProxy sees it (UP, DOWN, ...), from its CSV stats page."""
        rows = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text.splitlines()
        header = rows[0].lstrip("# ").split(",")
        states = {}
        for row in rows[1:]:
            cols = dict(zip(header, row.split(","), strict=False))
            if cols.get("pxname") == "replicas" and cols.get("svname", "").startswith("r"):
                states[cols["svname"]] = cols.get("status", "")
        return states

    def wait_balanced(self, timeout: float = 60) -> None:
        """Until HAProxy counts every live replica as UP and every dead one as DOWN."""
        want = {f"r{i + 1}": "UP" if n.pid else "DOWN" for i, n in enumerate(self.nodes)}
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                seen = self.backend_states()
                if all(seen.get(name, "").startswith(state) for name, state in want.items()):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"HAProxy sees {seen}, expected {want}")

    def stop(self) -> None:
        if "haproxy" in self.pids:
            kill_group(self.pids.pop("haproxy"))
        for i in range(len(self.nodes)):
            self.kill_replica(i, signal.SIGTERM)
        if "s3" in self.pids:
            kill_group(self.pids.pop("s3"))
        pg_cluster.stop(self.base / "pg")

    def describe(self) -> str:
        lines = [
            f"load balancer  {self.url}  (DICOMweb root {self.root}; HAProxy stats http://127.0.0.1:{self.stats_port}/stats)",
            *(f"replica {i + 1}      {n.base}  (log {n.log})" for i, n in enumerate(self.nodes)),
            f"PostgreSQL     {self.database_url}",
            f"S3 (moto)      {self.s3_endpoint}  bucket {self.blob_url}",
            "to run `dicomweb verify` (or import) on this archive, export:",
        ]
        env = {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            **S3_CREDENTIALS,
            "DICOMWEB_DATABASE_URL": self.database_url,
            "DICOMWEB_BLOB_URL": self.blob_url,
        }
        lines += [f"  export {name}={value}" for name, value in env.items()]
        return "\n".join(lines)

    # ---- a cluster left running by `up`, found again by `down` ---------------------------------------

    def save(self) -> None:
        state = {
            "base": str(self.base),
            "pids": self.pids,
            "replicas": [n.pid for n in self.nodes],
            "url": self.url,
            "database_url": self.database_url,
            "s3_endpoint": self.s3_endpoint,
        }
        (self.base / "cluster.json").write_text(json.dumps(state, indent=2))


def down(base: Path) -> None:
    state_file = base / "cluster.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        for pid in [state["pids"].get("haproxy"), *state["replicas"], state["pids"].get("s3")]:
            if pid:
                kill_group(int(pid))
    pg_cluster.stop(base / "pg")
    shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=["up", "down", "haproxy-config"],
        help="haproxy-config prints deploy/haproxy.cfg (the compose topology's)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dicomweb-cluster",
        help="where the cluster keeps its data, logs and state (default: %(default)s)",
    )
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "haproxy-config":
        print(haproxy_config(**COMPOSE_HAPROXY, compose=True), end="")
        return 0
    if args.command == "down":
        down(args.dir)
        print(f"stopped; removed {args.dir}")
        return 0
    if (args.dir / "cluster.json").exists():
        print(f"a cluster is already up in {args.dir}: `down` it first", file=sys.stderr)
        return 1
    cluster = Cluster(base=args.dir, replicas=args.replicas)
    try:
        cluster.start()
    except RuntimeError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        shutil.rmtree(args.dir, ignore_errors=True)
        return 1
    cluster.save()
    print(cluster.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
