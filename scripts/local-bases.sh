#!/bin/sh
# Build local stand-ins for the stack's base images, for a machine that reaches no image registry but
# reaches a Debian mirror and PyPI (scripts/stack_test.py calls this when `docker pull` fails):
#
#   sweeper-local/debian:bookworm      debootstrap --variant=minbase bookworm, imported
#   sweeper-local/python:bookworm      for python:3.12.12-slim-bookworm   (Python 3.11 in a venv)
#   sweeper-local/postgres:15-bookworm for postgres:16.10-bookworm        (Debian's PostgreSQL 15)
#   sweeper-local/torch:2.14.1         for pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime (PyPI wheels)
#
# Images already present are kept (delete them to rebuild); the Debian root file system is cached in
# SWEEPER_STACK_CACHE (default /var/cache/sweeper-stack). CA certificates the host trusts beyond
# Debian's (/usr/local/share/ca-certificates, e.g. a TLS-inspecting proxy's) are copied in, so apt and
# pip inside the builds reach their mirrors the way the host does. Needs root, debootstrap and a
# running Docker engine with the Compose plugin. Usage: scripts/local-bases.sh [MIRROR]
set -eu

mirror="${1:-http://deb.debian.org/debian}"
cache="${SWEEPER_STACK_CACHE:-/var/cache/sweeper-stack}"
here=$(cd "$(dirname "$0")/.." && pwd)

have() { docker image inspect "$1" >/dev/null 2>&1; }

if ! have sweeper-local/debian:bookworm; then
    command -v debootstrap >/dev/null || { echo "local-bases: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
    mkdir -p "${cache}"
    rootfs="${cache}/bookworm"
    if [ ! -f "${rootfs}/.complete" ]; then
        rm -rf "${rootfs}"
        echo "local-bases: debootstrap bookworm from ${mirror} into ${rootfs}"
        debootstrap --variant=minbase --include=ca-certificates bookworm "${rootfs}" "${mirror}" >"${cache}/debootstrap.log" 2>&1 \
            || { echo "local-bases: debootstrap failed, see ${cache}/debootstrap.log" >&2; exit 1; }
        rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
        touch "${rootfs}/.complete"
    fi
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "${crt}" ] && cp "${crt}" "${rootfs}/usr/local/share/ca-certificates/"
    done
    chroot "${rootfs}" update-ca-certificates >/dev/null
    echo "local-bases: importing sweeper-local/debian:bookworm"
    tar -C "${rootfs}" --exclude=./.complete -c . | docker import - sweeper-local/debian:bookworm >/dev/null
fi

for service in python postgres torch; do
    image=$(docker compose -f "${here}/docker/local-bases/compose.yml" config --images "${service}")
    if ! have "${image}"; then
        echo "local-bases: building ${image}"
        docker compose -f "${here}/docker/local-bases/compose.yml" build --quiet "${service}"
    fi
done
