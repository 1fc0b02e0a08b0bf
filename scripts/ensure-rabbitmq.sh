#!/bin/sh
# Make sure the rabbitmq-server binary is there: install it with apt-get when we can
# (root, or passwordless sudo), otherwise say in one sentence how to get it.
set -e
if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
    if [ "$SUDO" != none ]; then
        echo "installing rabbitmq-server with apt-get ..."
        $SUDO apt-get update -q >/dev/null
        # policy-rc.d or not, the system service is not needed: warren runs its own node.
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q rabbitmq-server >/dev/null
        $SUDO sh -c 'command -v systemctl >/dev/null && systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true'
        exit 0
    fi
fi
echo "rabbitmq-server is missing: install it (e.g. 'sudo apt-get install -y rabbitmq-server' on Debian/Ubuntu, 'brew install rabbitmq' on macOS) and run this again." >&2
exit 1
