#!/usr/bin/env bash
# Stand-in base images for `make compose-test`, on machines that reach no image registry.
#
# TEST PLUMBING, NOT WHAT USERS RUN. The compose files and the Dockerfile name the real images,
# python:3.11-slim and rabbitmq:3.10-management, and users pull those. When one of them is not
# on this Docker engine and cannot be pulled, this script builds a stand-in under the same tag
# from Debian's own packages (debootstrap bookworm, then `docker import`):
#   python:3.11-slim          Debian's python3 (3.11) as a venv at /usr/local, so `python` and
#                             `pip` are on PATH as in the real image, with this host's CA bundle
#                             (pip inside a container verifies the package registry with it)
#   rabbitmq:3.10-management  Debian's rabbitmq-server (3.10), configured from /etc/rabbitmq as
#                             the real image is, with a docker-entrypoint.sh that does what the
#                             real one does for warren: as root, own /var/lib/rabbitmq and step
#                             down to the rabbitmq user
# A real image already present is never touched. A stand-in carries the label
# org.warren.standin=<hash of this script> and is rebuilt only when this script changes.
# Cached between runs: the images themselves, and the debootstrap tarball under
# $WARREN_STANDIN_CACHE (default /var/cache/warren-standins), so a new Docker engine is
# seeded again without downloading anything.
#
# Exit codes: 0 the images are there; 77 the environment cannot provide them (no registry and
# no Debian archive); 1 anything else (a bug here).
set -euo pipefail

PYTHON_IMAGE=python:3.11-slim
RABBITMQ_IMAGE=rabbitmq:3.10-management
SUITE=bookworm
PACKAGES=python3,python3-venv,rabbitmq-server,ca-certificates,passwd
CACHE=${WARREN_STANDIN_CACHE:-/var/cache/warren-standins}
MIRROR=${WARREN_DEBIAN_MIRROR:-} # empty: debootstrap's default
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

RECIPE=$(sha256sum "$0" | cut -c1-16)
ROOTFS_KEY=$(printf '%s %s %s' "$SUITE" "$PACKAGES" "$MIRROR" | sha256sum | cut -c1-16)
TARBALL=$CACHE/$SUITE-minbase-$ROOTFS_KEY.tar
BASE_IMAGE=warren-standin-base:$SUITE-$ROOTFS_KEY

say() { printf 'standin-images: %s\n' "$*" >&2; }
environment_fails() {
    say "$*"
    exit 77
}

WORK=$(mktemp -d)
ROOTFS=""
cleanup() {
    if [[ -n $ROOTFS && -d $ROOTFS ]]; then
        # debootstrap mounts /proc and /sys inside the target; a failed run can leave them.
        grep -o " $ROOTFS/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l || true
        rm -rf --one-file-system "$ROOTFS"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The label a stand-in carries, or "" for a real image; fails when there is no such image.
standin_label() {
    docker image inspect --format '{{ index .Config.Labels "org.warren.standin" }}' "$1" \
        2>/dev/null | sed 's/^<no value>$//'
}

# Whether $1 is usable as it is: a real image, or a stand-in of this recipe.
image_ready() {
    local label
    label=$(standin_label "$1") || return 1
    [[ -z $label || $label == "$RECIPE" ]]
}

base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        return
    fi
    if [[ ! -s $TARBALL ]]; then
        command -v debootstrap >/dev/null ||
            environment_fails "debootstrap is not installed (apt-get install debootstrap)"
        mkdir -p "$CACHE"
        ROOTFS=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        say "debootstrap $SUITE with $PACKAGES (about 80 s, once; cached in $CACHE)"
        local args=(--variant=minbase "--include=$PACKAGES" "$SUITE" "$ROOTFS")
        [[ -n $MIRROR ]] && args+=("$MIRROR")
        if ! debootstrap "${args[@]}" >"$WORK/debootstrap.log" 2>&1; then
            tail -n 20 "$WORK/debootstrap.log" >&2
            environment_fails "debootstrap failed: is Debian's archive reachable?"
        fi
        rm -rf "${ROOTFS:?}"/var/cache/apt/archives/*.deb "${ROOTFS:?}"/var/lib/apt/lists/*
        tar -C "$ROOTFS" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
            --exclude='./sys/*' -cf "$TARBALL.tmp" .
        mv "$TARBALL.tmp" "$TARBALL"
        rm -rf --one-file-system "$ROOTFS"
        ROOTFS=""
        # Tarballs of other package lists or suites are stale.
        find "$CACHE" -maxdepth 1 -name '*-minbase-*.tar' ! -path "$TARBALL" -delete
    fi
    say "importing $TARBALL as $BASE_IMAGE"
    docker import "$TARBALL" "$BASE_IMAGE" >/dev/null
}

build() {
    local old
    old=$(docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true)
    if ! docker build --label "org.warren.standin=$RECIPE" -t "$1" "$2" >"$WORK/build.log" 2>&1; then
        cat "$WORK/build.log" >&2
        say "building the stand-in $1 failed"
        exit 1
    fi
    # The stand-in this one replaces, now untagged (kept if a container still uses it).
    if [[ -n $old && $old != $(docker image inspect --format '{{.Id}}' "$1") ]]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
}

build_python() {
    local ctx=$WORK/python
    mkdir -p "$ctx"
    cp "$HOST_CA_BUNDLE" "$ctx/ca-certificates.crt"
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8 \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /usr/local && python --version && pip --version
CMD ["python3"]
EOF
    build "$PYTHON_IMAGE" "$ctx"
}

build_rabbitmq() {
    local ctx=$WORK/rabbitmq
    mkdir -p "$ctx"
    cat >"$ctx/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stand-in for the official image's entrypoint, only as far as warren uses it: the server
# started as root owns its data folder and runs as the rabbitmq user; anything else runs as is.
set -e
# Debian's /usr/sbin/rabbitmq-server would send the log to a file and keep a shell in between;
# the server proper logs to stdout (RABBITMQ_LOGS=-) and receives `docker stop`'s SIGTERM.
if [ "$1" = rabbitmq-server ]; then
    shift
    if [ "$(id -u)" = 0 ]; then
        chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
            /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
    fi
    exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
EOF
    # RABBITMQ_LOGS=-: the log goes to stdout (`docker logs`), as in the real image. Debian's
    # package made an Erlang cookie at install time: drop it, so that, as with the real image,
    # a node makes its own unless it is given one (the cluster file gives one).
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8 \\
    HOME=/var/lib/rabbitmq \\
    RABBITMQ_LOGS=-
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh \\
    && rm -f /var/lib/rabbitmq/.erlang.cookie \\
    && mkdir -p /var/lib/rabbitmq && chown rabbitmq:rabbitmq /var/lib/rabbitmq
VOLUME /var/lib/rabbitmq
EXPOSE 4369 5671 5672 15671 15672 15691 15692 25672
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
EOF
    build "$RABBITMQ_IMAGE" "$ctx"
}

missing=()
for image in "$PYTHON_IMAGE" "$RABBITMQ_IMAGE"; do
    if image_ready "$image"; then
        continue
    fi
    if [[ -z $(standin_label "$image" || true) ]] && docker pull -q "$image" >/dev/null 2>&1; then
        say "pulled $image"
        continue
    fi
    missing+=("$image")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi

say "building stand-ins for ${missing[*]} (no registry answered): test plumbing only"
base_image
for image in "${missing[@]}"; do
    case $image in
    "$PYTHON_IMAGE") build_python ;;
    "$RABBITMQ_IMAGE") build_rabbitmq ;;
    esac
    say "built stand-in $image"
done
