#!/usr/bin/env bash
# Installs every real TFTP peer the tests drive. Clients for crates/cli/tests/interop_server.rs:
# tftp-hpa, atftp, curl, busybox. Servers for crates/cli/tests/interop_client.rs: tftpd-hpa, atftpd (unpacked under /opt/tftpx-peers/atftpd: it conflicts with tftpd-hpa
# in apt), dnsmasq (dnsmasq-base: no service) and rs-tftpd (crates.io `tftpd`, pinned), plus
# iproute2 and util-linux for the private network namespace that dnsmasq's fixed port 69 needs,
# systemd (systemd-socket-activate, systemd-analyze) for crates/cli/tests/systemd.rs, and
# python3-seccomp for crates/cli/tests/kernel.rs (a kernel without openat2, simulated).
# Packaging (crates/cli/tests/package.rs, .ci/deb-test.sh): cargo-deb (pinned), lintian,
# man-db and groff-base (man -l, groff), dpkg-dev (dpkg-shlibdeps for the .deb's Depends),
# adduser (the package's postinst), python3 (tomllib checks packaging/tftpx.toml).
# python3-prometheus-client for crates/cli/tests/metrics.rs (parses the --metrics scrape).
# nftables (the NAT router's masquerade) and iproute2 (namespaces, veth pairs, the ECMP route)
# for crates/cli/tests/fleet.rs and bench/fleet.sh; python3 drives a hand-made client there.
# Origins (crates/origin/tests, crates/cli/tests/origin.rs): python3 runs the HTTP test
# origin (standard library only); moto's S3 server (PyPI `moto[server]`, pinned, with boto3)
# goes into a virtualenv of Debian's python3 under /opt/tftpx-peers/moto-venv. nginx (Debian's,
# with its dav module) is the real HTTP origin of crates/origin/tests/nginx.rs: GET with ETags,
# and PUT for uploads; the test runs its own instance (no service is started here).
#
# Runs as root on Debian 12 with apt and cargo reaching their registries. Idempotent: a rerun
# installs nothing that is already there. The tests start every server themselves, on 127.0.0.1
# and a port they pick; no system service is started here.
set -euo pipefail

ATFTPD_DIR=/opt/tftpx-peers/atftpd
RS_TFTPD_VERSION=1.0.0
MOTO_VENV=/opt/tftpx-peers/moto-venv
MOTO_VERSION=5.2.5
BOTO3_VERSION=1.44.8
CARGO_DEB_VERSION=3.8.0
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

export DEBIAN_FRONTEND=noninteractive
installed=()

pkg_missing() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 0
    done
    return 1
}

# Debian packages. Keep tftpd-hpa's postinst from starting its service (it would bind port 69 on
# every address): a policy-rc.d that refuses every start, only for this install, only if the
# machine has none of its own.
# systemd: systemd-socket-activate and systemd-analyze for crates/cli/tests/systemd.rs.
apt_pkgs=(tftp-hpa atftp curl busybox tftpd-hpa dnsmasq-base iproute2 util-linux libwrap0 libpcre2-8-0 systemd python3-seccomp
    lintian man-db groff-base dpkg-dev adduser python3 python3-prometheus-client nftables python3-venv nginx)
if pkg_missing "${apt_pkgs[@]}"; then
    apt-get update -qq
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        own_policy=1
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
    if [ "$own_policy" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    installed+=("apt: ${apt_pkgs[*]}")
fi
# On a machine run by systemd (which may ignore policy-rc.d), turn the unit off by its name.
# Nothing here stops in.tftpd processes by name: a tftpd-hpa service that was already running
# binds port 69, which the tests never use outside their own network namespace.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now tftpd-hpa >/dev/null 2>&1 || true
    systemctl disable --now nginx >/dev/null 2>&1 || true
fi

# atftpd: unpacked, not installed (apt would remove tftpd-hpa). Its libraries (libwrap0,
# libpcre2-8-0) come from the apt step above.
if [ ! -x "$ATFTPD_DIR/usr/sbin/atftpd" ]; then
    apt-cache policy atftpd 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root atftpd >/dev/null)
    mkdir -p "$ATFTPD_DIR"
    dpkg -x "$tmp"/atftpd_*.deb "$ATFTPD_DIR"
    rm -rf "$tmp"
    installed+=("atftpd in $ATFTPD_DIR")
fi
if ldd "$ATFTPD_DIR/usr/sbin/atftpd" | grep -q 'not found'; then
    echo "atftpd misses shared libraries:" >&2
    ldd "$ATFTPD_DIR/usr/sbin/atftpd" | grep 'not found' >&2
    exit 1
fi

# rs-tftpd, pinned.
if ! cargo install --list 2>/dev/null | grep -q "^tftpd v$RS_TFTPD_VERSION:"; then
    cargo install --quiet --locked tftpd --version "$RS_TFTPD_VERSION"
    installed+=("rs-tftpd $RS_TFTPD_VERSION in $CARGO_BIN")
fi

# cargo-deb, pinned (about 2.5 min to build on 2 busy cores).
if ! cargo install --list 2>/dev/null | grep -q "^cargo-deb v$CARGO_DEB_VERSION:"; then
    cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION"
    installed+=("cargo-deb $CARGO_DEB_VERSION in $CARGO_BIN")
fi

# moto's S3 server for crates/origin/tests/s3.rs, pinned, in its own virtualenv (Debian's
# python3 refuses pip installs into the system).
if ! "$MOTO_VENV/bin/python" -c "import moto, boto3, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    rm -rf "$MOTO_VENV"
    /usr/bin/python3 -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "moto[server]==$MOTO_VERSION" "boto3==$BOTO3_VERSION"
    installed+=("moto[server] $MOTO_VERSION in $MOTO_VENV")
fi

for bin in /usr/bin/tftp /usr/bin/atftp /usr/bin/curl /bin/busybox /usr/sbin/in.tftpd "$ATFTPD_DIR/usr/sbin/atftpd" /usr/sbin/dnsmasq "$CARGO_BIN/tftpd" \
    /usr/bin/unshare /usr/sbin/ip "$CARGO_BIN/cargo-deb" /usr/bin/lintian /usr/bin/man /usr/bin/groff \
    /usr/sbin/nft /usr/bin/python3 "$MOTO_VENV/bin/python"; do
    [ -x "$bin" ] || { echo "missing after install: $bin" >&2; exit 1; }
done

if [ ${#installed[@]} -eq 0 ]; then
    echo "peers: all present (clients tftp-hpa, atftp, curl, busybox; servers tftpd-hpa, atftpd, dnsmasq, rs-tftpd $RS_TFTPD_VERSION; cargo-deb $CARGO_DEB_VERSION, lintian; moto $MOTO_VERSION)"
else
    printf 'peers installed: %s\n' "${installed[@]}"
fi
