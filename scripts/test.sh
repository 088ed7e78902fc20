#!/usr/bin/env bash
# The whole test suite on a fresh machine: a virtual environment (.venv, or $VENV) with the project and
# its test extras, the browser prerequisites (Debian chromium, Playwright's driver, the npm decoder,
# prebuilt OHIF), Debian's PostgreSQL server binaries (the PostgreSQL tests start their own temporary
# cluster), then ruff, mypy and pytest. Arguments go to pytest. Never installs into the system's Python
# (Debian's is externally managed, and a shared interpreter would hide what a plain install lacks).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
apt_install() {
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@"
}

if [ ! -x "$VENV/bin/python" ]; then
  # Debian's python3 needs python3-venv for ensurepip.
  python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$VENV"; }
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
PYTHON="$VENV/bin/python" bash scripts/setup-browser.sh
# PostgreSQL server binaries (the tests start their own cluster), HAProxy and the independent validators of
# tests/test_validation.py: dciodvfy (dicom3tools), gdcminfo/gdcmconv (libgdcm-tools), opj_decompress.
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v gdcmconv >/dev/null || missing+=(libgdcm-tools)
command -v opj_decompress >/dev/null || missing+=(libopenjp2-tools)
# The load balancer of the cluster tests (bench/cluster.py: two replicas on PostgreSQL and S3).
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi
# The linters hold the line before the tests run: ruff (rules in pyproject.toml) and mypy on the code.
"$VENV/bin/python" -m ruff check .
"$VENV/bin/python" -m ruff format --check .
"$VENV/bin/python" -m mypy dicomweb storage
"$VENV/bin/python" -m pytest -q "$@"
