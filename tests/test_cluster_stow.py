"""tests/test_stow.py against the cluster: PostgreSQL, an S3 server, two replicas behind HAProxy."""

from tests.cluster_suites import cluster_client, cluster_server  # noqa: F401 (fixtures: client, server)
from tests.test_stow import *

# These read the server's data folder or signal its process; tests/test_cluster.py checks the same the
# cluster's way (one object in the bucket per instance, a replica killed during ingest).
del test_same_instance_twice_keeps_one_copy  # noqa: F821
del test_body_truncated_after_many_parts_stores_nothing  # noqa: F821
del test_upload_survives_killed_parser_processes  # noqa: F821
