#!/bin/sh
# Make sure headless Chromium is there for the management-UI test: install Debian's chromium
# package with apt-get when we can (root, or passwordless sudo), otherwise say in one sentence
# that the test will be skipped and how to get it. Chromium is optional: exit 0 either way.
set -e
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
    if [ "$SUDO" != none ]; then
        echo "installing chromium with apt-get ..."
        $SUDO apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
        exit 0
    fi
fi
echo "chromium is missing, so the management-UI test will be skipped: install it (e.g. 'sudo apt-get install -y chromium' on Debian/Ubuntu) and run this again." >&2
exit 0
