#!/usr/bin/env bash
# PostgreSQL server binaries for tests/test_postgres.py. The test starts its own throwaway server on loopback in a
# temp dir (as the `postgres` user when run as root: the server refuses to run as root), so nothing is started here.
set -euo pipefail
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql
fi
id postgres >/dev/null  # the package creates this user; the test runs the server as it under root
ls -d /usr/lib/postgresql/*/bin
