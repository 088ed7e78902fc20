"""tests/test_progressive.py against the cluster: PostgreSQL, an S3 server, two replicas behind HAProxy."""

from tests.cluster_suites import cluster_client, cluster_server  # noqa: F401 (fixtures: client, server)
from tests.test_progressive import *
