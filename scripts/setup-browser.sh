#!/usr/bin/env bash
# Install what the viewers and the browser tests need, idempotently (a second run changes nothing):
#   - Debian's chromium (Playwright's own browser download is not used) and a font for screenshots;
#   - Python Playwright (its PyPI wheel carries the driver; `playwright install` is never run);
#   - viewer-demo's npm packages (the OpenJPEG WebAssembly decoder) from package-lock.json;
#   - the prebuilt OHIF v3 viewer (@ohif/app's dist/).
# The last two go where a server finds them wherever it was installed and started: by default the per-user
# folder ${XDG_DATA_HOME:-~/.local/share}/dicomweb/viewer-demo, laid out like viewer-demo/ (node_modules/,
# .ohif/dist). The server reads the same variables (dicomweb/static_sites.py).
# Options: --viewers-only (just the decoder and OHIF, what a server needs; no chromium, no Playwright).
# Environment: PYTHON (default: python3, or python), OHIF_VERSION (default 3.13.2),
# DICOMWEB_VIEWER_DEMO_DIR (install into this folder instead; e.g. the checkout's viewer-demo),
# DICOMWEB_OHIF_DIST (where to unpack OHIF).
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

viewers_only=false
case "${1:-}" in
  --viewers-only) viewers_only=true ;;
  "") ;;
  *) echo "usage: $0 [--viewers-only]" >&2; exit 2 ;;
esac

data_home=${XDG_DATA_HOME:-}
case "$data_home" in /*) ;; *) data_home=$HOME/.local/share ;; esac  # XDG: a relative value is ignored
TARGET=${DICOMWEB_VIEWER_DEMO_DIR:-$data_home/dicomweb/viewer-demo}
OHIF_VERSION=${OHIF_VERSION:-3.13.2}
OHIF_DIST=${DICOMWEB_OHIF_DIST:-$TARGET/.ohif/dist}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
step() { printf '\n== %s\n' "$*"; }

if ! $viewers_only; then
  step "chromium (Debian package)"
  if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi liberation; then
    echo "already installed: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
  else
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium fonts-liberation
  fi

  step "Python Playwright (driver only; the browser is /usr/bin/chromium)"
  if "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
    echo "already installed: playwright $("$PYTHON" -m pip show playwright 2>/dev/null | sed -n 's/^Version: //p')"
  else
    "$PYTHON" -m pip install -q --disable-pip-version-check 'playwright>=1.45,<2'
  fi
fi

step "viewer-demo npm packages (npm ci) -> $TARGET/node_modules"
mkdir -p "$TARGET"
cd "$TARGET"
for f in package.json package-lock.json; do  # the checkout's lock decides; copied only when it differs
  cmp -s "$here/viewer-demo/$f" "$f" 2>/dev/null || cp "$here/viewer-demo/$f" "$f"
done
want=$(node -p "require('./package-lock.json').packages['node_modules/@cornerstonejs/codec-openjpeg'].version")
have=$(node -p "require('./node_modules/@cornerstonejs/codec-openjpeg/package.json').version" 2>/dev/null || true)
if [ "$want" = "$have" ]; then
  echo "already installed: @cornerstonejs/codec-openjpeg $have"
else
  npm ci --no-audit --no-fund --loglevel=error
fi

step "OHIF v3 prebuilt viewer @ohif/app@$OHIF_VERSION -> $OHIF_DIST"
marker="$OHIF_DIST/.ohif-version"
if [ -f "$OHIF_DIST/index.html" ] && [ "$(cat "$marker" 2>/dev/null)" = "$OHIF_VERSION" ]; then
  echo "already unpacked"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # npm pack checks the tarball against the registry's integrity hash.
  tarball=$(cd "$tmp" && npm pack "@ohif/app@$OHIF_VERSION" --silent)
  rm -rf "$OHIF_DIST.new" && mkdir -p "$OHIF_DIST.new"
  # Source maps are left out (about a sixth of the package); nothing loads them at run time.
  tar -xzf "$tmp/$tarball" -C "$OHIF_DIST.new" --strip-components=2 --wildcards 'package/dist/*' \
    --exclude='*.map'
  echo "$OHIF_VERSION" > "$OHIF_DIST.new/.ohif-version"
  rm -rf "$OHIF_DIST" && mv "$OHIF_DIST.new" "$OHIF_DIST"
  echo "unpacked $(find "$OHIF_DIST" -type f | wc -l) files, $(du -sh "$OHIF_DIST" | cut -f1)"
fi

step "done"
echo "installed in $TARGET (a server started anywhere finds it there)"
echo "viewer-demo: http://HOST:PORT/viewer-demo/   OHIF: http://HOST:PORT/ohif/ and /ohif-progressive/"
