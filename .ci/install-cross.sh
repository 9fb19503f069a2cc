#!/bin/bash
# .ci/install-cross.sh - install the cross toolchains and QEMU for exportd's
# aarch64 / armv7 lanes (cross/build). Idempotent; a no-op (well under a second)
# when everything is already present. Needs root (or passwordless sudo).
#
# What it installs (recipe: ../shared/notes/qemu.md, verified on Debian 12):
#   - foreign architectures arm64 + armhf, and the bookworm-backports suite
#   - Debian's rustc-web pinned to $RUST_DEB_VERSION (1.85, = rust-version) with
#     its amd64 std (apt), and the arm64 + armhf std unpacked from their .debs
#     into /usr/lib/rustlib (not installed through apt). The note installs the
#     arm64 std with apt; that drags in libllvm19:arm64 -> libxml2:arm64 ->
#     liblzma5:arm64, which apt cannot resolve as soon as the amd64 copy of a
#     Multi-Arch: same library is at a version the arm64 index lacks (seen here
#     2026-11: liblzma5 5.4.1-1 vs 5.4.1-1+deb12u1). For armhf apt never works.
#     Unpacking needs none of the foreign runtime libraries (and keeps a second
#     libc6:arm64 out of /lib, the root of the qemu-user hang in the note).
#   - gcc + libc6-dev cross toolchains for aarch64 and armhf (+ their binutils:
#     aarch64-linux-gnu-strip, arm-linux-gnueabihf-strip), host binutils, cpio,
#     jq (cross/build reads cargo's JSON with it)
#   - qemu-user + qemu-system-arm from backports, --no-install-recommends
#
# rustup's toolchain stays the driver: /root/.cargo/bin (cargo/rustc 1.95) comes
# first in PATH; Debian's compiler lives at /usr/bin/rustc and is only used when
# RUSTC=/usr/bin/rustc is set (cross/build does that for the cross targets).
# The three Rust packages are put on hold so an `apt-get upgrade` cannot move
# /usr/bin/rustc away from the version of the unpacked armhf std.
set -euo pipefail

V=${RUST_DEB_VERSION:-1.85.0+dfsg3-1~deb12u3}
RUSTLIB=/usr/lib/rustlib
# rust target = Debian architecture whose std gets unpacked
declare -A STD_ARCH=([aarch64-unknown-linux-gnu]=arm64 [armv7-unknown-linux-gnueabihf]=armhf)
APT=(apt-get -y -q -o DPkg::Lock::Timeout=600)
export DEBIAN_FRONTEND=noninteractive

SUDO=
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-cross: need root or sudo" >&2; exit 1; }
  SUDO=sudo
fi

# name[:arch]=version ("" = any version); checked with one dpkg-query call
PINNED=("rustc-web=$V" "libstd-rust-web-dev=$V")
PLAIN=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
       binutils-aarch64-linux-gnu binutils-arm-linux-gnueabihf binutils cpio gzip jq)
BPO=(qemu-user qemu-system-arm)

missing() {  # prints the package specs that are absent or at the wrong version
  local spec name want got
  for spec in "${PINNED[@]}" "${PLAIN[@]}" "${BPO[@]}"; do
    name=${spec%%=*}; want=; [ "$name" != "$spec" ] && want=${spec#*=}
    got=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$name" 2>/dev/null || true)
    case $got in
      [ih]"i "*) [ -z "$want" ] || [ "${got:3}" = "$want" ] || echo "$spec" ;;  # ii / hi(held)
      *) echo "$spec" ;;
    esac
  done
}

std_ok() {  # TARGET: its std is there, from Debian version $V
  local arch=${STD_ARCH[$1]}
  [ -d "$RUSTLIB/$1/lib" ] || return 1
  [ "$(cat "$RUSTLIB/$1/.exportd-deb-version" 2>/dev/null)" = "$V" ] && return 0
  # installed through apt instead (the note's way for arm64): fine at version $V
  local got; got=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "libstd-rust-web-dev:$arch" 2>/dev/null)
  [ "${got:1}" = "i $V" ]
}
stds_missing() { local t; for t in "${!STD_ARCH[@]}"; do std_ok "$t" || echo "std-$t"; done; }

foreign=$(dpkg --print-foreign-architectures)
todo=$(missing; stds_missing)
if [ -z "$todo" ] && grep -qx arm64 <<<"$foreign" && grep -qx armhf <<<"$foreign"; then
  echo "install-cross: all present (rustc $(/usr/bin/rustc --version | cut -d' ' -f2), $(qemu-system-aarch64 --version | head -1))"
  exit 0
fi
echo "install-cross: to install: $(echo $todo)"

# 1. architectures + backports suite
for a in arm64 armhf; do grep -qx $a <<<"$foreign" || $SUDO dpkg --add-architecture $a; done
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  src=/etc/apt/sources.list.d/debian.sources
  [ -r $src ] || { echo "install-cross: no $src to derive bookworm-backports from" >&2; exit 1; }
  awk 'BEGIN{RS="";ORS="\n\n"} NR==1' $src | sed 's/^Suites: .*/Suites: bookworm-backports/' |
    $SUDO tee /etc/apt/sources.list.d/backports.sources >/dev/null
fi

# 2. one apt-get update, then the installs
# (retried: a mirror mid-sync makes one index fail with "unexpected size")
for try in 1 2 3; do
  $SUDO "${APT[@]}" update && break
  [ $try = 3 ] && { echo "install-cross: apt-get update kept failing; trying the installs anyway" >&2; break; }
  sleep $((try * 5))
done
$SUDO apt-mark unhold rustc-web libstd-rust-web-dev >/dev/null 2>&1 || true
$SUDO "${APT[@]}" install --allow-downgrades "${PINNED[@]}" "${PLAIN[@]}"
$SUDO apt-mark hold rustc-web libstd-rust-web-dev >/dev/null
$SUDO "${APT[@]}" install -t bookworm-backports --no-install-recommends "${BPO[@]}"

# 3. arm64 + armhf std, unpacked (not installed) from the same Debian version
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
for t in "${!STD_ARCH[@]}"; do
  std_ok "$t" && continue
  a=${STD_ARCH[$t]}; mkdir -p "$d/$a"
  (cd "$d/$a" && apt-get download -q -o APT::Sandbox::User=root "libstd-rust-web-dev:$a=$V" "libstd-rust-web-${V%.*+*}:$a=$V")
  for f in "$d/$a"/*.deb; do dpkg-deb -x "$f" "$d/$a/x"; done
  [ -d "$d/$a/x$RUSTLIB/$t/lib" ] || { echo "install-cross: no $t std in the $a .debs" >&2; exit 1; }
  $SUDO rm -rf "${RUSTLIB:?}/$t"
  $SUDO cp -a "$d/$a/x$RUSTLIB/$t" "$RUSTLIB/"
  echo "$V" | $SUDO tee "$RUSTLIB/$t/.exportd-deb-version" >/dev/null
done

# 4. sanity: the pinned compiler has all three std's, and rustup still drives
sysroot=$(/usr/bin/rustc --print sysroot)
for t in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  ls "$sysroot/lib/rustlib/$t/lib"/libstd-*.rlib >/dev/null 2>&1 ||
    { echo "install-cross: no std for $t in $sysroot" >&2; exit 1; }
done
echo "install-cross: done: /usr/bin/rustc $(/usr/bin/rustc --version | cut -d' ' -f2);" \
     "PATH rustc $(rustc --version 2>/dev/null | cut -d' ' -f2 || echo none)"
