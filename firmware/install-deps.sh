#!/usr/bin/env bash
# Installs (idempotently) everything firmware/boot-test.sh needs, all from Debian packages:
# QEMU, the firmware (iPXE ROMs, OVMF, U-Boot), the boot loaders (PXELINUX, GRUB EFI), dnsmasq
# for DHCP, and unpacks a Debian kernel and busybox-static for amd64 and arm64 (apt-get
# download + dpkg -x, never installed) under $TFTPX_FW_CACHE (default
# /var/cache/tftpx-firmware). Needs root. Prints nothing to stdout but progress.
set -euo pipefail

CACHE=${TFTPX_FW_CACHE:-/var/cache/tftpx-firmware}
export DEBIAN_FRONTEND=noninteractive

PKGS=(qemu-system-x86 qemu-system-arm ipxe-qemu ovmf u-boot-qemu pxelinux syslinux-common
    grub-efi-amd64-bin grub-common dnsmasq-base iproute2 cpio gzip)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Per-architecture downloads go through a private apt state (lists and archives under
# $CACHE/apt-ARCH), so the machine's dpkg architectures and apt lists are left untouched.
apt_arch() {
    local tool=$1 arch=$2
    shift 2
    local dir=$CACHE/apt-$arch
    mkdir -p "$dir/lists/partial" "$dir/archives/partial"
    "$tool" -qq -o APT::Sandbox::User=root -o APT::Architecture="$arch" -o APT::Architectures::="$arch" \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir" \
        -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache="" "$@"
}

# unpack ARCH: kernel (vmlinuz) and busybox-static into $CACHE/ARCH/{kernel,busybox}
unpack() {
    local arch=$1 dir=$CACHE/$1
    if [[ -f $dir/ok ]]; then return; fi
    echo "install-deps: downloading the $arch kernel and busybox-static"
    apt_arch apt-get "$arch" update
    # linux-image-ARCH is a metapackage: download the versioned image it depends on.
    local kpkg
    kpkg=$(apt_arch apt-cache "$arch" depends "linux-image-$arch" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    kpkg=${kpkg%%:*}
    [[ -n $kpkg ]] || { echo "install-deps: no kernel package for $arch" >&2; exit 1; }
    rm -rf "$dir" && mkdir -p "$dir/dl"
    (cd "$dir/dl" && apt_arch apt-get "$arch" download "$kpkg:$arch" "busybox-static:$arch")
    dpkg -x "$dir"/dl/linux-image-*.deb "$dir/kernel"
    dpkg -x "$dir"/dl/busybox-static_*.deb "$dir/busybox"
    rm -rf "$dir/kernel/lib/modules" "$dir/kernel/usr/lib/modules"
    cp "$dir"/kernel/boot/vmlinuz-* "$dir/vmlinuz"
    cp "$dir/busybox/bin/busybox" "$dir/busybox.bin"
    echo "$kpkg" >"$dir/kernel-package"
    rm -rf "$dir/dl" "$dir/kernel" "$dir/busybox"
    touch "$dir/ok"
}
unpack amd64
unpack arm64
