#!/usr/bin/env bash
# Installs what the image test and benchmark need on a Debian 12 (bookworm) host, as root:
# podman (a daemonless engine: no Docker daemon to run), runc (podman's default, crun, fails
# on a host with cgroups v1 in hybrid mode), netavark + aardvark-dns + iptables (a container's
# own network, so its ports cannot clash with the host's: HAProxy binds 8404/9101 everywhere)
# and mmdebstrap (the stand-in base's Debian root file system). Idempotent: packages already
# installed are not asked for again. The engine's settings are not installed here: they are
# cluster/image/containers.conf, passed by cluster/image/podman.py as CONTAINERS_CONF.
#
#   cluster/image/setup-podman.sh          # .ci/run calls it
set -euo pipefail
PACKAGES=(podman runc netavark aardvark-dns iptables mmdebstrap)
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "setup-podman.sh: run as root to install ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    # No recommends: buildah, fuse-overlayfs, slirp4netns, uidmap are for rootless use.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
podman --version
