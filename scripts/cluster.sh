#!/usr/bin/env bash
# The scale-out topology on this machine, without containers (bench/cluster.py): a temporary PostgreSQL
# cluster, moto's S3 server, two `dicomweb serve` replicas and HAProxy in front, all on 127.0.0.1.
#   bash scripts/cluster.sh up [--dir DIR] [--replicas N]   start; prints the URLs and the environment
#   bash scripts/cluster.sh down [--dir DIR]                stop everything and remove DIR
# Needs the test extras (moto[server], obstore, asyncpg) and Debian's postgresql and haproxy packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" -m bench.cluster "$@"
