#!/usr/bin/env bash
# The whole test suite on a fresh machine: the project with its test extras, the browser prerequisites
# (Debian chromium, Playwright's driver, the npm decoder, prebuilt OHIF), Debian's PostgreSQL server
# binaries (the PostgreSQL tests start their own temporary cluster), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
bash scripts/setup-browser.sh
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql
fi
python3 -m pytest -q "$@"
