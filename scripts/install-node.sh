#!/usr/bin/env bash
# Install what the Node half of the client matrix (tests/test_clients.py) needs: Debian's
# `nodejs` and `npm` when `node`/`npm` are missing. The pinned npm packages themselves are
# installed by the test (`npm ci` in tests/node, from its package-lock.json).
# Usage: scripts/install-node.sh
set -euo pipefail

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  node --version
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO=none; fi
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$SUDO" = none ]; then
  echo "install-node: no node/npm and no way to apt-get them here; the Node client tests will be skipped (and fail in CI)" >&2
  exit 0
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
node --version
