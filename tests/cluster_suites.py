"""Fixtures that point a protocol suite at the cluster (tests/conftest.py's `cluster`): a module that does
`from tests.test_stow import *` and imports these runs every test of that suite through HAProxy against
two replicas on PostgreSQL and S3. Tests that read the server's own folder or signal its process are
removed by those modules; tests/test_cluster.py covers what they check, the cluster's way."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ClusterServer


@pytest.fixture(scope="module", name="server")
def cluster_server(cluster) -> ClusterServer:
    return ClusterServer(cluster)


@pytest.fixture(scope="module", name="client")
def cluster_client(server: ClusterServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.root, timeout=120) as c:
        yield c
