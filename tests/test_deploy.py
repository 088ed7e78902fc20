"""deploy/ is kept in step with what the tests run (bench/cluster.py): no container engine exists here, so
the compose file is checked by reading, and HAProxy's configuration by HAProxy itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bench.cluster import COMPOSE_HAPROXY, Cluster, haproxy_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_haproxy_cfg_is_the_generated_one() -> None:
    assert (DEPLOY / "haproxy.cfg").read_text() == haproxy_config(**COMPOSE_HAPROXY, compose=True), (
        "regenerate it: python -m bench.cluster haproxy-config > deploy/haproxy.cfg"
    )
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.fail("HAProxy is missing: apt-get install haproxy (scripts/test.sh does)")
    check = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_compose_has_the_tested_topology() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "bucket", "replica1", "replica2", "haproxy"}
    # The replicas are what COMPOSE_HAPROXY balances, on the port the image listens on.
    assert COMPOSE_HAPROXY["servers"] == ["replica1:8000", "replica2:8000"]
    assert "DICOMWEB_PORT=8000" in (DEPLOY.parent / "Dockerfile").read_text()
    assert services["haproxy"]["ports"] == [f"{COMPOSE_HAPROXY['bind'].split(':')[1]}:8080"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["haproxy"]["volumes"]
    # Every variable the test cluster gives its replicas, the compose replicas get too.
    tested = set(Cluster(base=Path("/nonexistent")).cluster_env())
    for name in ("replica1", "replica2"):
        env = services[name]["environment"]
        missing = tested - set(env)
        assert not missing, f"{name} lacks {missing}"
        assert env["DICOMWEB_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        bucket = env["DICOMWEB_BLOB_URL"].removeprefix("s3://").split("/")[0]
        assert f"m/{bucket}" in " ".join(services["bucket"]["entrypoint"])
        assert services[name]["volumes"] == [f"{name}:/data"]
    assert "pip install '.[postgres,s3]'" in (DEPLOY.parent / "Dockerfile").read_text()
