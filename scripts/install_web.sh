#!/usr/bin/env bash
# Installs the demo page's front end (server/web: onnxruntime-web from npm, exact versions from
# package-lock.json) with `npm ci`, and Debian's nodejs/npm first when npm is missing. Reruns only when the
# lock file changed. Install scripts are not run: the page needs none of them.
set -euo pipefail
cd "$(dirname "$0")/../server/web"
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    SUDO="sudo -n"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi
