#!/usr/bin/env bash
# Installs what ablate needs on a fresh Debian/Ubuntu machine: Fashion-MNIST and PostgreSQL from
# the distribution, then the package with its test extra. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
if ! dpkg -s dataset-fashion-mnist postgresql >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist postgresql >/dev/null
fi
python -m pip install -q -e '.[test]'
