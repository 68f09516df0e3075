#!/usr/bin/env bash
# The Debian package, end to end (issue 12, "Install"): builds it with cargo-deb (a release
# build of tftpx-cli), installs it with dpkg -i, checks its files, its conffile, the `tftp`
# account (also created from nothing, in a private copy of /etc), the installed units, then
# serves a file with the INSTALLED /usr/bin/tftpx on 127.0.0.1 (a port the OS picks) and
# fetches it with curl, byte for byte; runs lintian on the .deb (errors fail, warnings are
# listed); removes and purges the package.
#
# A script run by .ci/run after `cargo test`, not a cargo test: it changes the machine (a
# package, an account, /srv/tftp), which `cargo test` on a developer's machine must not,
# and it needs a release build. Root, Debian 12; cargo-deb, curl, lintian, man-db from
# .ci/install-peers.sh. Replaces a `tftpx` package installed before. Leaves the package purged (the `tftp` account and /srv/tftp stay,
# as Debian leaves them).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
step() { echo "== deb-test: $*"; }
for tool in cargo-deb curl lintian dpkg-deb man unshare; do
    command -v "$tool" >/dev/null || fail "$tool missing (bash .ci/install-peers.sh)"
done

work=$(mktemp -d)
server_pid=
installed=0
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    # A failed run leaves no package behind either.
    if [ "$installed" = 1 ]; then dpkg --purge tftpx >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

step "cargo deb -p tftpx-cli"
t0=$(date +%s)
cargo deb -p tftpx-cli >"$work/cargo-deb.log" 2>&1 || { cat "$work/cargo-deb.log"; fail "cargo deb"; }
t1=$(date +%s)
deb=$(tail -n 1 "$work/cargo-deb.log")
[ -f "$deb" ] || { cat "$work/cargo-deb.log"; fail "cargo deb printed no .deb path"; }
echo "built $deb in $((t1 - t0)) s ($(stat -c %s "$deb") bytes)"

step "contents"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$work/contents"
for f in /usr/bin/tftpx /etc/tftpx/tftpx.toml \
    /usr/share/man/man1/tftpx.1.gz /usr/share/man/man1/tftpx-serve.1.gz \
    /usr/share/bash-completion/completions/tftpx /usr/share/zsh/vendor-completions/_tftpx \
    /usr/share/fish/vendor_completions.d/tftpx.fish /usr/share/doc/tftpx/copyright; do
    grep -qx "$f" "$work/contents" || fail "$f not in the package"
done
units_dir=$(grep -E '/systemd/system/tftpx\.service$' "$work/contents" | xargs -r dirname)
[ -n "$units_dir" ] || fail "tftpx.service not in the package"
grep -qx "$units_dir/tftpx.socket" "$work/contents" || fail "tftpx.socket not in the package"
echo "units in $units_dir"
dpkg-deb -f "$deb" Package Version Depends

step "lintian"
# --fail-on error: errors fail the test; warnings and info are printed for the report.
lintian --fail-on error --tag-display-limit 0 --info "$deb" | tee "$work/lintian" || fail "lintian errors"
echo "lintian: $(grep -c '^E:' "$work/lintian" || true) errors, $(grep -c '^W:' "$work/lintian" || true) warnings"

step "dpkg -i"
installed=1
dpkg -i "$deb"
dpkg -L tftpx >"$work/listed"
for f in /usr/bin/tftpx /etc/tftpx/tftpx.toml "$units_dir/tftpx.service" "$units_dir/tftpx.socket" \
    /usr/share/man/man1/tftpx-serve.1.gz /usr/share/bash-completion/completions/tftpx; do
    grep -qx "$f" "$work/listed" || fail "dpkg -L tftpx does not list $f"
done
for f in /usr/bin/tftpx /etc/tftpx/tftpx.toml "$units_dir/tftpx.service" "$units_dir/tftpx.socket"; do
    [ -f "$f" ] || fail "$f not installed"
done
conffiles=$(dpkg-query -W -f='${Conffiles}' tftpx)
echo "conffiles:$conffiles"
echo "$conffiles" | grep -q '^ /etc/tftpx/tftpx.toml [0-9a-f]\{32\}$' || fail "/etc/tftpx/tftpx.toml is not a conffile"
cmp /etc/tftpx/tftpx.toml packaging/tftpx.toml || fail "installed tftpx.toml differs"
[ "$(/usr/bin/tftpx --version)" = "tftpx $(dpkg-query -W -f='${Version}' tftpx | sed 's/-[^-]*$//')" ] \
    || fail "/usr/bin/tftpx --version: $(/usr/bin/tftpx --version)"
getent passwd tftp || fail "no tftp account after install"
[ -d /srv/tftp ] || fail "/srv/tftp missing"
if grep -rqs 'path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/; then
    echo "man pages excluded by /etc/dpkg/dpkg.cfg.d: man not run on the installed page"
else
    page=$(MANWIDTH=200 MANPAGER=cat man tftpx-serve | sed 's/.\x08//g')
    grep -q -- '--allow-create' <<<"$page" || fail "man tftpx-serve does not show --allow-create"
fi
# The installed units: systemd-analyze verify (systemd need not be PID 1).
systemd-analyze verify "$units_dir/tftpx.socket" "$units_dir/tftpx.service" || fail "systemd-analyze verify"

step "tftp account created by postinst where there is none (private copy of /etc)"
# In a private mount namespace, /etc is an overlay whose writes go to a tmpfs: the tftp
# lines are taken out of that copy and the installed postinst runs. The machine's /etc is
# untouched. Twice: no account and no group; a group but no account.
for case in no-group with-group; do
    unshare --mount --propagation private bash -euc '
        mkdir -p "$1/ovl" && mount -t tmpfs tmpfs "$1/ovl"
        mkdir "$1/ovl/upper" "$1/ovl/work"
        mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/ovl/upper,workdir=$1/ovl/work" /etc
        sed -i "/^tftp:/d" /etc/passwd /etc/shadow
        [ "$2" = with-group ] || sed -i "/^tftp:/d" /etc/group /etc/gshadow
        ! getent passwd tftp >/dev/null || { echo "tftp still there"; exit 1; }
        # As dpkg runs it (deb-systemd-helper checks these).
        export DPKG_MAINTSCRIPT_PACKAGE=tftpx DPKG_MAINTSCRIPT_NAME=postinst
        /var/lib/dpkg/info/tftpx.postinst configure
        line=$(getent passwd tftp) || { echo "postinst created no tftp account"; exit 1; }
        echo "created: $line ($2)"
        IFS=: read -r _ _ uid gid _ home shell <<<"$line"
        [ "$uid" -lt 1000 ] || { echo "not a system uid: $uid"; exit 1; }
        [ "$(getent group "$gid" | cut -d: -f1)" = tftp ] || { echo "primary group is not tftp"; exit 1; }
        [ "$home" = /srv/tftp ] && [ "$shell" = /usr/sbin/nologin ] || { echo "home/shell: $home $shell"; exit 1; }
        /var/lib/dpkg/info/tftpx.postinst configure   # again: nothing to do, no error
    ' _ "$work" "$case" || fail "postinst account creation ($case)"
done
getent passwd tftp >/dev/null || fail "the machine lost its tftp account"

step "serve with the installed /usr/bin/tftpx, fetch with curl"
root="$work/root"
mkdir -m 0755 "$root"
head -c 300000 /dev/urandom >"$root/boot.img"
chmod 0644 "$root/boot.img"
chmod 0755 "$work"
# Started as root: it binds, then runs as the tftp account (the default when it exists).
/usr/bin/tftpx serve "$root" --listen 127.0.0.1:0 2>"$work/serve.log" &
server_pid=$!
port=
for _ in $(seq 1 300); do
    port=$(sed -n 's/.* on 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' "$work/serve.log" | head -n 1)
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log"; fail "tftpx serve exited"; }
    sleep 0.1
done
[ -n "$port" ] || { cat "$work/serve.log"; fail "tftpx serve did not say where it listens within 30 s"; }
user=$(ps -o user= -p "$server_pid" | tr -d ' ')
[ "$user" = tftp ] || fail "installed tftpx runs as '$user', not tftp"
curl -s --max-time 60 -o "$work/fetched" "tftp://127.0.0.1:$port/boot.img" || { cat "$work/serve.log"; fail "curl"; }
cmp "$root/boot.img" "$work/fetched" || fail "fetched file differs"
echo "fetched 300000 bytes from /usr/bin/tftpx on 127.0.0.1:$port (running as $user): identical"
kill -TERM "$server_pid"
for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$server_pid" 2>/dev/null || fail "tftpx serve still running 10 s after SIGTERM"
wait "$server_pid" || true
server_pid=

step "dpkg -r, dpkg --purge"
dpkg -r tftpx
[ ! -e /usr/bin/tftpx ] || fail "/usr/bin/tftpx left after dpkg -r"
[ ! -e "$units_dir/tftpx.service" ] || fail "tftpx.service left after dpkg -r"
[ -f /etc/tftpx/tftpx.toml ] || fail "dpkg -r removed the conffile (only purge should)"
dpkg --purge tftpx
installed=0
[ ! -e /etc/tftpx/tftpx.toml ] || fail "conffile left after purge"
! dpkg-query -W tftpx >/dev/null 2>&1 || [ "$(dpkg-query -W -f='${Status}' tftpx)" = "unknown ok not-installed" ] \
    || fail "package still known: $(dpkg-query -W -f='${Status}' tftpx)"
echo "deb-test: OK (package build $((t1 - t0)) s)"
