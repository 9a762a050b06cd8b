#!/usr/bin/env bash
# Installs what ablate needs on a fresh Debian/Ubuntu machine: Fashion-MNIST, PostgreSQL, and Slurm with
# munge (the tests start a one-node cluster on localhost) from the distribution, then the package with its
# test extra. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
PACKAGES="dataset-fashion-mnist postgresql slurm-wlm munge"
if ! dpkg -s $PACKAGES >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PACKAGES >/dev/null
fi
python -m pip install -q -e '.[test]'
