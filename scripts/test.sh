#!/usr/bin/env bash
# The whole test suite on a fresh machine: the project with its test extras, the browser prerequisites
# (Debian chromium, Playwright's driver, the npm decoder, prebuilt OHIF), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
bash scripts/setup-browser.sh
python3 -m pytest -q "$@"
