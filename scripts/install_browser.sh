#!/usr/bin/env bash
# Installs Debian's chromium (headless browser of the web-page tests), and openssl and ssh-keygen (the
# certificates and SuperNode keys of scripts/flower_deploy.sh, tests/test_secured_deployment.py), unless
# they are already there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 \
  && command -v ssh-keygen >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium openssl openssh-client >/dev/null
command -v chromium openssl ssh-keygen
