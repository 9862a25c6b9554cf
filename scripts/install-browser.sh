#!/usr/bin/env bash
# Install what the chat page's browser tests need, without any browser download by a test tool:
#   - Debian's Chromium at /usr/bin/chromium (apt-get, only if missing);
#   - the Python `playwright` package into the project's virtual environment. Its own browser
#     download (`playwright install`) is never run: the tests launch /usr/bin/chromium through
#     `executable_path`.
# Usage: scripts/install-browser.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO=none; fi
  fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "$SUDO" = none ]; then
    echo "install-browser: no /usr/bin/chromium and no way to apt-get it here; the browser tests will be skipped" >&2
  else
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi

if ! "$PY" -c "import playwright" 2>/dev/null; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install -q "playwright>=1.40"
fi

[ -x /usr/bin/chromium ] && /usr/bin/chromium --version 2>/dev/null || true
