#!/bin/sh
# The stand-in for debian:bookworm-slim, made from Debian's packages (no image registry is
# reachable here): a debootstrap minbase, trimmed as the official slim images are, with
# apt set up like this machine's and this machine's CA bundle. Package downloads inside
# image builds go through a TLS-intercepting proxy; with the image's own bundle pip fails
# with CERTIFICATE_VERIFY_FAILED.
# Usage (root): rootfs.sh DIR   (build.sh imports DIR as an image)
set -eu
DIR="$1"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_BUNDLE=/etc/ssl/certs/ca-certificates.crt

debootstrap --variant=minbase --include=ca-certificates bookworm "$DIR" "$MIRROR"

# apt: the same sources and options as the machine that builds (its mirror rules).
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$DIR/etc/apt/sources.list.d/debian.sources"
    rm -f "$DIR/etc/apt/sources.list"
fi
f=/etc/apt/apt.conf.d/99artifact-registry
if [ -f "$f" ]; then cp "$f" "$DIR$f"; fi
# What the official images do: no daemons started by package scripts, no apt caches,
# no docs, man pages or translations in later installs.
printf '#!/bin/sh\nexit 101\n' >"$DIR/usr/sbin/policy-rc.d"
chmod 755 "$DIR/usr/sbin/policy-rc.d"
cat >"$DIR/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
Acquire::Languages "none";
CONF
cat >"$DIR/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CONF
rm -rf "$DIR"/var/cache/apt/archives/*.deb "$DIR"/var/cache/apt/*.bin "$DIR"/var/lib/apt/lists/* \
    "$DIR"/usr/share/man/* "$DIR"/usr/share/info/* "$DIR"/var/log/*.log "$DIR"/var/cache/debconf/*-old
find "$DIR/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$DIR/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# This machine's CA bundle, and the certificates it has beyond Debian's as local CAs, so
# that an update-ca-certificates in a later build keeps them.
if [ -f "$HOST_BUNDLE" ]; then
    awk -v seen="$DIR/etc/ssl/certs/ca-certificates.crt" -v out="$DIR/usr/local/share/ca-certificates/host-" '
        BEGIN { while ((getline l < seen) > 0) { b = b l "\n"; if (l ~ /^-----END/) { have[b] = 1; b = "" } } }
        { c = c $0 "\n" }
        /^-----END/ { if (!(c in have)) { n++; f = out n ".crt"; printf "%s", c > f; close(f) } c = "" }
    ' "$HOST_BUNDLE"
    cp "$HOST_BUNDLE" "$DIR/etc/ssl/certs/ca-certificates.crt"
fi
