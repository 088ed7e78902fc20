"""tests/test_rendered.py against the cluster: PostgreSQL, an S3 server, two replicas behind HAProxy."""

from tests.cluster_suites import cluster_client, cluster_server  # noqa: F401 (fixtures: client, server)
from tests.test_rendered import *

# Starts a server of its own (one worker, a local folder) to watch one instance's master being made.
del test_rendering_while_pending_and_after  # noqa: F821
