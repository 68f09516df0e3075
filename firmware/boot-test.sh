#!/usr/bin/env bash
# End-to-end firmware network boot test: real firmware under QEMU (TCG) loads a Debian kernel
# and a test initrd from `tftpx serve`; a run passes only when the booted Linux userland has
# verified the sha256 of the payloads its initrd carries and printed TFTPX-BOOT-OK.
#
#   ipxe     SeaBIOS + iPXE ROM, QEMU user networking, DHCP bootfile
#            tftp://10.0.2.2:PORT/pxelinux.0 -> PXELINUX -> its config -> kernel + initrd
#   ovmf     OVMF (UEFI, edk2's PXE; iPXE ROM disabled) on a tap device -> grubx64.efi ->
#            grub.cfg -> kernel + initrd
#   uboot-x86    U-Boot qemu-x86 (32-bit): dhcp, tftpboot kernel + initrd, zboot
#   uboot-arm64  U-Boot qemu_arm64: kernel + initrd with tftpwindowsize 8, a missing file
#            (expects "File not found"), then a 34 MiB second initrd archive at 512-byte
#            blocks (block numbers roll over), booti
#
# The tap device, dnsmasq (DHCP only) and tftpx on port 69 live in a private network
# namespace created here and removed on exit; QEMU's user networking for iPXE runs in it too.
#
# Usage: firmware/boot-test.sh [--self-test] [--keep] [FIRMWARE...]
#   FIRMWARE      any of: ipxe ovmf uboot-x86 uboot-arm64 (default: all four)
#   --self-test   test of the test: corrupt one byte of the served initrd's payload and boot
#                 (ipxe by default); succeeds only if that boot FAILS
#   --keep        keep the work directory (logs, boot tree) even on success
# Environment: TFTPX_FW_CACHE (downloads, default /var/cache/tftpx-firmware),
#   TFTPX_FW_TIMEOUT (seconds per boot, default 180), TFTPX (a prebuilt tftpx binary),
#   TFTPX_FW_KARGS (extra kernel arguments, default "quiet").
# Needs root (network namespace, tap device, port 69). Exit status 0 only if every boot passed.

# QEMU arguments contain commas; ${...} in U-Boot commands is expanded by U-Boot.
# shellcheck disable=SC2054,SC2016
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${TFTPX_FW_CACHE:-/var/cache/tftpx-firmware}
BOOT_TIMEOUT=${TFTPX_FW_TIMEOUT:-180}
KARGS=${TFTPX_FW_KARGS:-quiet}
ALL=(ipxe ovmf uboot-x86 uboot-arm64)

self_test=no
keep=no
only=()
for arg in "$@"; do
    case $arg in
    --self-test) self_test=yes ;;
    --keep) keep=yes ;;
    ipxe | ovmf | uboot-x86 | uboot-arm64) only+=("$arg") ;;
    -h | --help)
        sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "boot-test: unknown argument $arg (try --help)" >&2
        exit 2
        ;;
    esac
done
if ((${#only[@]} == 0)); then
    if [[ $self_test == yes ]]; then only=(ipxe); else only=("${ALL[@]}"); fi
fi

log() { printf '%s boot-test: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------------------------------------
# Dependencies and the server binary
bash "$HERE/install-deps.sh"
if [[ -z ${TFTPX:-} ]]; then
    log "building tftpx (cargo build --release -p tftpx-cli)"
    (cd "$REPO" && cargo build --release -q -p tftpx-cli)
    TFTPX=$REPO/target/release/tftpx
fi

# ---------------------------------------------------------------------------------------------
# Work directory, network namespace, clean-up (only what this script started or created)
WORK=$(mktemp -d /tmp/tftpx-fw.XXXXXX)
NS=tftpxfw$$
NET=10.77.0
PIDS=()
ns_created=no
status=1

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $ns_created == yes ]]; then ip netns del "$NS" 2>/dev/null || true; fi
    if [[ $keep == yes || $status != 0 ]]; then
        log "logs and boot tree kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop PID: stops one process this script started and forgets it.
stop() {
    local pid=$1 p keep_pids=()
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep_pids+=("$p")
    done
    PIDS=("${keep_pids[@]}")
}

nsexec() { ip netns exec "$NS" "$@"; }

# ---------------------------------------------------------------------------------------------
# The boot tree, built fresh for every run (nothing binary is committed)
ROOT=$WORK/tftproot
mkdir -p "$ROOT/pxelinux.cfg" "$ROOT/grub" "$ROOT/arm64"

# payload_cpio DIR FILE SIZE: writes DIR/tftpx/FILE (SIZE random bytes) and its .sha256
payload() {
    local dir=$1 name=$2 size=$3
    mkdir -p "$dir/tftpx"
    head -c "$size" /dev/urandom >"$dir/tftpx/$name"
    (cd "$dir/tftpx" && sha256sum "$name" >"$name.sha256")
}

# cpio_of DIR: a newc archive of DIR on stdout, entries sorted (the payload comes last)
cpio_of() { (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet); }

# initrd ARCH OUT: busybox-static + /init + a 1 MiB random payload, gzip, padded to 4 bytes
# so that another cpio archive can follow it in memory.
initrd() {
    local arch=$1 out=$2 tree=$WORK/initrd-$1
    mkdir -p "$tree/bin"
    cp "$CACHE/$arch/busybox.bin" "$tree/bin/busybox"
    cp "$HERE/init" "$tree/init"
    chmod 755 "$tree/init" "$tree/bin/busybox"
    payload "$tree" payload 1048576
    cpio_of "$tree" | gzip -n -1 >"$out"
    local pad=$(((4 - $(stat -c %s "$out") % 4) % 4))
    head -c "$pad" /dev/zero >>"$out"
}

log "building the boot tree in $ROOT"
cp /usr/lib/PXELINUX/pxelinux.0 /usr/lib/syslinux/modules/bios/ldlinux.c32 "$ROOT/"
cp "$HERE/pxelinux.cfg" "$ROOT/pxelinux.cfg/default"
cp "$HERE/grub.cfg" "$ROOT/grub/grub.cfg"
# A network GRUB with everything built in, so it fetches only its config, kernel and initrd.
grub-mkimage -O x86_64-efi -p '(tftp)/grub' -o "$ROOT/grubx64.efi" \
    efinet tftp net linux normal echo configfile gzio test serial terminal
cp "$CACHE/amd64/vmlinuz" "$ROOT/vmlinuz"
cp "$CACHE/arm64/vmlinuz" "$ROOT/arm64/vmlinuz"
initrd amd64 "$ROOT/initrd.gz"
initrd arm64 "$ROOT/arm64/initrd.gz"
# 34 MiB: 69632 blocks of 512 bytes, so the 16-bit block number wraps past 65535.
mkdir -p "$WORK/big"
payload "$WORK/big" big 35651584
cpio_of "$WORK/big" >"$ROOT/arm64/big.cpio"

# The sums /init will print (first 16 hex digits of each payload's sha256, in name order).
expect_amd64="TFTPX-BOOT-OK $(cut -c1-16 "$WORK/initrd-amd64/tftpx/payload.sha256")"
expect_arm64="TFTPX-BOOT-OK $(cut -c1-16 "$WORK/big/tftpx/big.sha256") $(cut -c1-16 "$WORK/initrd-arm64/tftpx/payload.sha256")"

if [[ $self_test == yes ]]; then
    # Flip every bit of one byte inside the payload (stored, not compressed: it is random),
    # 64 KiB before the end of initrd.gz. The kernel does not check the gzip CRC; /init must.
    for f in "$ROOT/initrd.gz" "$ROOT/arm64/initrd.gz"; do
        off=$(($(stat -c %s "$f") - 65536))
        byte=$(od -An -tu1 -j "$off" -N1 "$f" | tr -d ' ')
        printf '%b' "\\0$(printf '%03o' $((255 - byte)))" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
        log "self-test: corrupted $(basename "$f") at offset $off ($byte -> $((255 - byte)))"
    done
fi

# ---------------------------------------------------------------------------------------------
# The private network: loopback (iPXE's user networking reaches tftpx there) and a tap device
# with dnsmasq's DHCP (no TFTP) for OVMF and U-Boot.
ip netns add "$NS"
ns_created=yes
nsexec ip link set lo up
nsexec ip tuntap add dev tap0 mode tap
nsexec ip addr add "$NET.1/24" dev tap0
nsexec ip -6 addr add fd77::1/64 dev tap0 nodad
nsexec ip link set tap0 up
ip netns exec "$NS" dnsmasq -k --conf-file=/dev/null --port=0 --interface=tap0 --bind-interfaces \
    --dhcp-range="$NET.100,$NET.200,1h" --dhcp-range=fd77::,ra-only \
    --dhcp-boot="grubx64.efi,,$NET.1" --no-ping --dhcp-leasefile="$WORK/dnsmasq.leases" \
    --pid-file= --user=root --log-facility="$WORK/dnsmasq.log" --log-dhcp &
PIDS+=($!)

# ---------------------------------------------------------------------------------------------
# Helpers to run one boot

# wait_for FILE REGEX PID SECONDS: until FILE matches REGEX (0), PID exits or time runs out (1)
wait_for() {
    local file=$1 re=$2 pid=$3 deadline=$((SECONDS + $4))
    while ((SECONDS < deadline)); do
        if grep -aEq -- "$re" "$file" 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { grep -aEq -- "$re" "$file" 2>/dev/null && return 0; return 1; }
        sleep 0.2
    done
    return 1
}

# lines REGEX FILE: how many lines match (0 is not an error)
lines() { grep -Ec -- "$1" "$2" || true; }

# count FILE STRING: occurrences of a fixed string
count() { grep -aoF -- "$2" "$1" 2>/dev/null | wc -l; }

# uboot_run PID SERIAL CMD...: stops autoboot, then types each command at the prompt and waits
# for the next prompt (U-Boot drops input typed while a command runs). The last command is
# the boot, which never returns to the prompt.
uboot_run() {
    local pid=$1 serial=$2 cmd n
    shift 2
    wait_for "$serial" 'Hit any key to stop autoboot' "$pid" 90 || return 1
    printf '\r' >&3
    wait_for "$serial" '=> ' "$pid" 10 || return 1
    for cmd in "$@"; do
        n=$(count "$serial" '=> ')
        printf '%s\r' "$cmd" >&3
        # wait for prompt number n+1 (the boot command ends without one)
        local deadline=$((SECONDS + 120))
        while (($(count "$serial" '=> ') <= n)); do
            grep -aq 'TFTPX-BOOT-' "$serial" && return 0
            kill -0 "$pid" 2>/dev/null || return 1
            ((SECONDS < deadline)) || return 1
            sleep 0.2
        done
    done
}

declare -A RESULT SECS OPTS COUNTS REASON

# group: "OPTIONS FILE" lines (OPTIONS without spaces inside brackets or as one word list up to
# the last field) -> "    OPTIONS: FILE FILE..." in first-seen order, each file once.
group() {
    awk '{f=$NF; $NF=""; sub(/ $/, ""); if (!($0 in o)) k[n++]=$0; if (!((f, $0) in seen)) {seen[f, $0]=1; o[$0]=o[$0] " " f}}
        END {for (i = 0; i < n; i++) print "    " k[i] ":" o[k[i]]}'
}

# boot NAME: runs one firmware boot; records PASS/FAIL, seconds and the negotiated options.
boot() {
    local name=$1 dir=$WORK/$1 listen expect qemu=() uboot=() tftpx_pid qemu_pid
    mkdir -p "$dir"
    local serial=$dir/serial.log tlog=$dir/tftpx.log
    expect=$expect_amd64
    case $name in
    ipxe)
        listen=127.0.0.1:6969
        qemu=(qemu-system-x86_64 -machine pc,accel=tcg -m 512
            -netdev "user,id=n0,bootfile=tftp://10.0.2.2:6969/pxelinux.0"
            -device e1000,netdev=n0,romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom -boot n)
        ;;
    ovmf)
        listen=$NET.1:69
        cp /usr/share/OVMF/OVMF_VARS_4M.fd "$dir/vars.fd"
        qemu=(qemu-system-x86_64 -machine q35,accel=tcg -m 512
            -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
            -drive "if=pflash,format=raw,unit=1,file=$dir/vars.fd"
            -netdev tap,id=n0,ifname=tap0,script=no,downscript=no
            -device virtio-net-pci,netdev=n0,romfile=)
        ;;
    uboot-x86)
        listen=$NET.1:69
        qemu=(qemu-system-x86_64 -machine pc,accel=tcg -m 512
            -bios /usr/lib/u-boot/qemu-x86/u-boot.rom
            -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device e1000,netdev=n0)
        uboot=("setenv autoload no; setenv bootargs console=ttyS0 $KARGS panic=-1 tftpx.parts=1"
            'dhcp'
            'tftpboot 0x1000000 vmlinuz && tftpboot 0x10000000 initrd.gz && zboot 0x1000000 0 0x10000000 ${filesize}')
        ;;
    uboot-arm64)
        listen=$NET.1:69
        expect=$expect_arm64
        qemu=(qemu-system-aarch64 -machine virt,accel=tcg -cpu cortex-a57 -m 1024
            -bios /usr/lib/u-boot/qemu_arm64/u-boot.bin
            -netdev tap,id=n0,ifname=tap0,script=no,downscript=no
            -device virtio-net-pci,netdev=n0,romfile=)
        uboot=("setenv autoload no; setenv tftpwindowsize 8; setenv bootargs console=ttyAMA0 $KARGS panic=-1 tftpx.parts=2"
            'dhcp'
            'tftpboot 0x40400000 arm64/vmlinuz && tftpboot 0x48000000 arm64/initrd.gz && setenv isize ${filesize}'
            'tftpboot 0x50000000 arm64/no-such-file || echo TFTPX-MISSING-DONE'
            'setenv tftpwindowsize 1; setenv tftpblocksize 512; setexpr baddr 0x48000000 + ${isize}; tftpboot ${baddr} arm64/big.cpio && setexpr rdsize ${isize} + ${filesize}'
            'booti 0x40400000 0x48000000:${rdsize} ${fdtcontroladdr}')
        ;;
    esac

    ip netns exec "$NS" "$TFTPX" serve "$ROOT" --listen "$listen" --user root >"$tlog" 2>&1 &
    tftpx_pid=$!
    PIDS+=("$tftpx_pid")
    wait_for "$tlog" 'serving' "$tftpx_pid" 10 || {
        log "$name: tftpx did not start"
        cat "$tlog"
        RESULT[$name]=FAIL SECS[$name]=0 OPTS[$name]="" COUNTS[$name]="" REASON[$name]="tftpx did not start"
        return
    }

    rm -f "$dir/in"
    mkfifo "$dir/in"
    exec 3<>"$dir/in"
    local start=$SECONDS
    log "$name: booting (${qemu[0]}, timeout ${BOOT_TIMEOUT}s)"
    ip netns exec "$NS" timeout "$BOOT_TIMEOUT" "${qemu[@]}" -display none -monitor none -serial stdio \
        -no-reboot <&3 >"$serial" 2>&1 &
    qemu_pid=$!
    PIDS+=("$qemu_pid")
    local ok=yes
    if ((${#uboot[@]})); then uboot_run "$qemu_pid" "$serial" "${uboot[@]}" || ok=no; fi
    if [[ $ok == yes ]]; then
        wait_for "$serial" 'TFTPX-BOOT-(OK|FAIL)' "$qemu_pid" $((BOOT_TIMEOUT - SECONDS + start)) || ok=no
    fi
    SECS[$name]=$((SECONDS - start))
    RESULT[$name]=FAIL
    if grep -aq "^$expect" <(tr -d '\r' <"$serial"); then
        RESULT[$name]=PASS REASON[$name]="payload verified by /init"
    elif grep -aq 'TFTPX-BOOT-FAIL' "$serial"; then
        REASON[$name]=$(grep -a -m1 -o 'TFTPX-BOOT-FAIL.*' "$serial" | tr -d '\r')
    elif [[ $ok == no ]]; then
        REASON[$name]="no marker within ${BOOT_TIMEOUT} s (or QEMU exited)"
    else
        REASON[$name]="unexpected marker: $(grep -a -m1 -o 'TFTPX-BOOT-OK.*' "$serial" | tr -d '\r')"
    fi
    if [[ $name == uboot-arm64 && ${RESULT[$name]} == PASS ]]; then
        if grep -aq "TFTP error: 'File not found' (1)" "$serial"; then
            REASON[$name]+="; missing file: U-Boot printed TFTP error: 'File not found' (1)"
        else
            RESULT[$name]=FAIL REASON[$name]="U-Boot did not report the missing file as 'File not found'"
        fi
    fi
    stop "$qemu_pid"
    exec 3>&-
    stop "$tftpx_pid"
    # What the firmware asked for and what was negotiated, as tftpx logged them.
    local req neg
    req=$(sed -nE 's/.*RRQ from [^ ]+ "([^"]*)" octet \[(.*)\]$/[\2] \1/p' "$tlog" | group)
    neg=$(sed -nE 's/.*RRQ from [^ ]+ "([^"]*)" octet: ok, [0-9]+ bytes in .* MB\/s\), (.*)/\2 \1/p' "$tlog" |
        sed -E 's/ tsize=[0-9]+/ tsize/' | group)
    OPTS[$name]="  requested:
$req
  negotiated:
$neg"
    COUNTS[$name]="$(lines ': ok, ' "$tlog") ok, $(lines 'refused with ERROR 1 ' "$tlog") missing files, $(lines ': size probe' "$tlog") size probes, $(lines '^[^ ]+ +(WARN|ERROR) ' "$tlog") warnings"
    log "$name: ${RESULT[$name]} in ${SECS[$name]} s (transfers: ${COUNTS[$name]})"
    echo "---- $name: tftpx log"
    sed -E 's/^[0-9T:.-]+Z +//' "$tlog"
    echo "---- $name: serial console (last lines)"
    tr -d '\033' <"$serial" | tr -s '\r' '\n' | grep -av '^\s*$' | tail -n 8
    echo "----"
}

for fw in "${only[@]}"; do boot "$fw"; done

echo
echo "== firmware boot summary (tftpx $("$TFTPX" --version 2>/dev/null | awk '{print $2}'))"
failed=0
for fw in "${only[@]}"; do
    printf '%-12s %s %4s s  %s\n' "$fw" "${RESULT[$fw]}" "${SECS[$fw]}" "${REASON[$fw]}"
    echo "  transfers: ${COUNTS[$fw]}"
    echo "${OPTS[$fw]}"
    [[ ${RESULT[$fw]} == PASS ]] || failed=1
done
echo "total: $SECONDS s"

if [[ $self_test == yes ]]; then
    # Only the failure the corruption must cause counts: a boot that failed for another
    # reason (no network, a timeout) proves nothing about the check.
    if [[ ${RESULT[${only[0]}]} == FAIL && ${REASON[${only[0]}]} == *"checksum mismatch"* ]]; then
        echo "self-test PASSED: the boot with a corrupted payload byte failed, as it must"
        status=0
    else
        echo "self-test FAILED: expected /init to report a checksum mismatch"
        status=1
    fi
else
    status=$failed
fi
exit "$status"
