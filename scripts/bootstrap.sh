#!/usr/bin/env bash
# Make sure the machine has what `make run` needs: Python 3.11+ with venv, and npm.
# Installs missing pieces from Debian packages when running as root; otherwise says what to install.
set -euo pipefail
need=()
if ! python3 -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null; then need+=(python3 python3-venv); fi
command -v npm >/dev/null || need+=(npm)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing ${need[*]} from Debian packages..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "Pulseboard needs: ${need[*]} (Python 3.11+ with venv, and npm). Install them and run 'make run' again." >&2
  exit 1
fi
