#!/bin/sh
# Make sure the restic binary is there (bench/restic.py times warren against it): install
# Debian's package with apt-get when we can (root, or passwordless sudo), otherwise say in
# one sentence how to get it.
set -e
if command -v restic >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
    if [ "$SUDO" != none ]; then
        echo "installing restic with apt-get ..."
        $SUDO apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q restic >/dev/null
        exit 0
    fi
fi
echo "restic is missing: install it (e.g. 'sudo apt-get install -y restic' on Debian/Ubuntu, 'brew install restic' on macOS) and run this again." >&2
exit 1
