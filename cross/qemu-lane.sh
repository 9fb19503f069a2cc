#!/bin/bash
# cross/qemu-lane.sh - run aarch64 test binaries in a full-system QEMU VM
# (Debian arm64 kernel + busybox initramfs, TCG). Derived from the verified
# ../shared/notes/qemu-lane.sh; normally called by `cross/build test`.
#
# Usage: qemu-lane.sh [--cwd DIR] [--copy PATH]... [--mkdir DIR]... [--env NAME=VALUE]... TESTBIN...
#   --cwd DIR         working directory (inside the guest) for the TESTBINs that
#                     follow it; default /tmp. cross/build passes each test's
#                     CARGO_MANIFEST_DIR, as `cargo test` would.
#   --copy PATH       put PATH (file or directory, symlinks followed) into the
#                     guest at the same absolute path (`..` resolved lexically,
#                     as `$CARGO_MANIFEST_DIR/../shared` is). ELF files among
#                     them are stripped and get their libraries like TESTBINs.
#   --mkdir DIR       create an empty writable DIR in the guest (e.g. the
#                     compile-time CARGO_TARGET_TMPDIR of integration tests).
#   --env NAME=VALUE  exported in the guest (also: EXPORTD_LANE=qemu always,
#                     and CI when it is set on the host).
# Exit: 0 all passed, 1 a test binary failed / hung / the guest did not finish,
#       2 setup error.
# Env knobs: CACHE_DIR (~/.cache/qemu-lane) MEM (1024) SMP (2) CPU (cortex-a72)
#   TIMEOUT (900 s, whole VM) TEST_TIMEOUT (300 s, per binary, SIGKILL)
#   SYSROOT (/usr/aarch64-linux-gnu) STRIP (1) TEST_ARGS ("", e.g. --test-threads=2)
#   KERNEL_PKG (default: what linux-image-cloud-arm64 depends on) VERBOSE (1:
#   console on stdout) KEEP (0: keep workdir + console log) SUMMARY_FILE (write
#   key=value totals there, for cross/build's table).
set -euo pipefail
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qemu-lane}
MEM=${MEM:-1024}; SMP=${SMP:-2}; CPU=${CPU:-cortex-a72}
TIMEOUT=${TIMEOUT:-900}; TEST_TIMEOUT=${TEST_TIMEOUT:-300}
SYSROOT=${SYSROOT:-/usr/aarch64-linux-gnu}; STRIP=${STRIP:-1}; TEST_ARGS=${TEST_ARGS:-}
VERBOSE=${VERBOSE:-1}; KEEP=${KEEP:-0}; SUMMARY_FILE=${SUMMARY_FILE:-}
die() { echo "qemu-lane: $*" >&2; exit 2; }
. "$(dirname "${BASH_SOURCE[0]}")/lane-table.sh"   # bin_row, bin_table
for t in qemu-system-aarch64 cpio gzip dpkg-deb apt-get readelf timeout aarch64-linux-gnu-strip; do
  command -v $t >/dev/null || die "missing $t (run .ci/install-cross.sh)"; done

# 0. arguments
cwd=/tmp; copies=(); mkdirs=(); envs=("EXPORTD_LANE=qemu"); tests=(); cwds=()
[ -n "${CI:-}" ] && envs+=("CI=$CI")
while [ $# -gt 0 ]; do
  case $1 in
    --cwd) cwd=$2; shift 2 ;;
    --copy) copies+=("$2"); shift 2 ;;
    --mkdir) mkdirs+=("$2"); shift 2 ;;
    --env) [[ $2 == [A-Za-z_]*=* ]] || die "bad --env $2"; envs+=("$2"); shift 2 ;;
    --) shift; break ;;
    -*) die "unknown option $1" ;;
    *) tests+=("$1"); cwds+=("$cwd"); shift ;;
  esac
done
for b in "$@"; do tests+=("$b"); cwds+=("$cwd"); done
[ ${#tests[@]} -ge 1 ] || die "usage: $0 [--cwd DIR] [--copy PATH]... [--mkdir DIR]... [--env N=V]... TESTBIN..."

# 1. kernel + busybox, downloaded once (needs dpkg --add-architecture arm64)
mkdir -p "$CACHE_DIR"
if [ ! -s "$CACHE_DIR/vmlinuz" ] || [ ! -s "$CACHE_DIR/busybox" ]; then
  KERNEL_PKG=${KERNEL_PKG:-$(apt-cache depends linux-image-cloud-arm64:arm64 |
      awk '/Depends: linux-image-/{print $2; exit}')}
  [ -n "$KERNEL_PKG" ] || die "cannot resolve kernel package (dpkg --add-architecture arm64?)"
  dl=$(mktemp -d)
  ( cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$KERNEL_PKG" busybox-static:arm64 ) >&2
  mkdir "$dl/x"; for d in "$dl"/*.deb; do dpkg-deb -x "$d" "$dl/x"; done
  cp "$dl"/x/boot/vmlinuz-* "$CACHE_DIR/vmlinuz.tmp"; cp "$dl"/x/bin/busybox "$CACHE_DIR/busybox"
  cp "$dl"/x/boot/config-* "$CACHE_DIR/config"; ls "$dl"/*.deb | xargs -n1 basename > "$CACHE_DIR/packages"
  mv "$CACHE_DIR/vmlinuz.tmp" "$CACHE_DIR/vmlinuz"; rm -rf "$dl"
fi

# 2. initramfs
W=$(mktemp -d /tmp/qemu-lane.XXXXXX); R=$W/root
[ "$KEEP" = 1 ] || trap 'rm -rf "$W"' EXIT
mkdir -p $R/bin $R/lib $R/tests $R/lane $R/etc $R/proc $R/sys $R/dev $R/tmp $R/run $R/root
cp "$CACHE_DIR/busybox" $R/bin/busybox
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > $R/etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > $R/etc/group
printf '127.0.0.1 localhost lane\n::1 localhost ip6-localhost\n' > $R/etc/hosts
printf 'passwd: files\ngroup: files\nhosts: files\n' > $R/etc/nsswitch.conf

# DT_NEEDED closure from $SYSROOT/lib: one consistent glibc (the note's trap)
declare -A seen; queue=()
add_needed() { local f; for f in $(readelf -d "$1" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    [ -n "${seen[$f]:-}" ] && continue; seen[$f]=1
    [ -e "$SYSROOT/lib/$f" ] || die "library $f (needed by $1) not found in $SYSROOT/lib"
    cp -L "$SYSROOT/lib/$f" $R/lib/; queue+=("$SYSROOT/lib/$f"); done; }
is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }
put_elf() {  # SRC DEST: copy, strip, pull in its libraries
  cp -L "$1" "$2"
  if [ "$STRIP" = 1 ]; then aarch64-linux-gnu-strip "$2" 2>/dev/null || true; fi
  add_needed "$1"
}
names=(); i=0
for k in "${!tests[@]}"; do
  b=${tests[$k]}
  [ -f "$b" ] && [ -x "$b" ] || die "not an executable: $b"
  i=$((i+1)); n=$(printf '%02d-%s' $i "$(basename "$b")"); names+=("$n")
  put_elf "$b" "$R/tests/$n"
  printf '%s\t%s\n' "$n" "${cwds[$k]}" >> $R/lane/list
  mkdir -p "$R${cwds[$k]}"
done
for p in "${copies[@]}"; do
  case $p in /*) ;; *) p=$PWD/$p ;; esac
  src=$p; dst=$R$(realpath -m -s "$p")
  [ -e "$src" ] || die "--copy: no such path $p"
  mkdir -p "$(dirname "$dst")"
  if [ -d "$src" ]; then mkdir -p "$dst"; cp -rL "$src/." "$dst/"
  elif is_elf "$src"; then put_elf "$src" "$dst"
  else cp -L "$src" "$dst"; fi
done
for m in "${mkdirs[@]}"; do mkdir -p "$R$(realpath -m -s "$m")"; done
while [ ${#queue[@]} -gt 0 ]; do q=${queue[0]}; queue=("${queue[@]:1}"); add_needed "$q"; done
for f in ld-linux-aarch64.so.1 libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
  [ -e $R/lib/$f ] || cp -L "$SYSROOT/lib/$f" $R/lib/ 2>/dev/null || true; done
{ printf 'export PATH=/bin HOME=/root TMPDIR=/tmp RUST_BACKTRACE=${RUST_BACKTRACE:-1}\n'
  for e in "${envs[@]}"; do v=${e#*=}; printf "export %s='%s'\n" "${e%%=*}" "${v//\'/\'\\\'\'}"; done
} > $R/lane/env
printf '%s\n' "$TEST_ARGS" > $R/lane/test-args
echo "$TEST_TIMEOUT" > $R/lane/test-timeout
# /tmp is not a separate tmpfs: the initramfs root is already in RAM, and a
# mount there would hide a crate that lives under /tmp (a fresh CI clone).
cat > $R/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run; chmod 1777 /tmp; mkdir -p /dev/shm; mount -t tmpfs shm /dev/shm
ln -sf /proc/self/fd /dev/fd 2>/dev/null; hostname lane; ifconfig lo 127.0.0.1 up 2>/dev/null
. /lane/env
echo "@@LANE START kernel=$(uname -r) cpus=$(nproc) up=$(cut -d' ' -f1 /proc/uptime)"
fail=0; args=$(cat /lane/test-args); tt=$(cat /lane/test-timeout); tab=$(printf '\t')
while IFS=$tab read -r n dir; do
  echo "@@LANE BEGIN $n (timeout ${tt}s)"; b0=$(cut -d' ' -f1 /proc/uptime)
  (cd "$dir" && exec timeout -s KILL "$tt" /tests/$n $args) </dev/null; rc=$?
  b1=$(cut -d' ' -f1 /proc/uptime)
  echo; echo "@@LANE RC $n $rc $(awk -v a="$b0" -v b="$b1" 'BEGIN {printf "%.2f", b - a}')s"; [ $rc -eq 0 ] || fail=1
done < /lane/list
echo "@@LANE DONE fail=$fail up=$(cut -d' ' -f1 /proc/uptime)"
sync; poweroff -f; echo o > /proc/sysrq-trigger; sleep 5
EOF
chmod +x $R/init
( cd $R && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 ) | gzip -1 > $W/initrd.gz
echo "qemu-lane: ${#tests[@]} test binaries, initramfs $(du -h $W/initrd.gz | cut -f1)," \
     "kernel $(grep linux-image "$CACHE_DIR/packages" 2>/dev/null)" >&2

# 3. boot (TCG)
LOG=$W/console.log; t0=$(date +%s%N); set +e
timeout --foreground -k 5 "$TIMEOUT" qemu-system-aarch64 -M virt -cpu "$CPU" -smp "$SMP" -m "$MEM" \
  -nographic -nic none -no-reboot -kernel "$CACHE_DIR/vmlinuz" -initrd $W/initrd.gz \
  -append "console=ttyAMA0 panic=-1 quiet loglevel=3" </dev/null 2>&1 |
  tr -d '\r' | if [ "$VERBOSE" = 1 ]; then tee "$LOG"; else cat > "$LOG"; fi
qrc=${PIPESTATUS[0]}; set -e
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "qemu-lane: qemu exit $qrc after $ms ms" >&2
[ "$qrc" = 124 ] && echo "qemu-lane: TIMEOUT after ${TIMEOUT}s (whole VM)" >&2

# 4. verdict, from the console markers (a missing marker is a failure)
status=0; bpass=0; bfail=0; tpass=0; tfail=0; tign=0; rows=()
for n in "${names[@]}"; do
  rc=$(sed -n "s/^@@LANE RC $n \([0-9]*\)\( .*\)\{0,1\}$/\1/p" "$LOG" | tail -1)
  bms=$(sed -n "s/^@@LANE RC $n [0-9]* \([0-9]*\)\.\([0-9]*\)s$/\1\20/p" "$LOG" | tail -1)
  bms=${bms:+$((10#$bms))}
  # libtest's "test result:" lines between this binary's BEGIN and RC markers
  read -r p f g < <(awk -v n="$n" 'index($0, "@@LANE BEGIN " n " ")==1 || $0=="@@LANE BEGIN " n {on=1; next}
      on && index($0, "@@LANE RC " n " ")==1 {on=0}
      on && /^test result: / {for(j=1;j<=NF;j++){ if($(j)~/^passed;?$/)p+=$(j-1);
        if($(j)~/^failed;?$/)f+=$(j-1); if($(j)~/^ignored;?$/)g+=$(j-1)}}
      END {print p+0, f+0, g+0}' "$LOG")
  tpass=$((tpass+p)); tfail=$((tfail+f)); tign=$((tign+g))
  short=$(sed 's/-[0-9a-f]\{16\}$//' <<<"$n")
  if [ "$rc" = 0 ]; then echo "PASS $n ($p passed, $g ignored)"; bpass=$((bpass+1))
    rows+=("$(bin_row PASS "$short" "${bms:--}" "$TEST_TIMEOUT" "$p passed, $g ignored")")
  else
    why="rc=${rc:-missing}"; [ "$rc" = 137 ] && why="rc=137: killed, hung past TEST_TIMEOUT=${TEST_TIMEOUT}s?"
    echo "FAIL $n ($why; $p passed, $f failed)"; status=1; bfail=$((bfail+1))
    rows+=("$(bin_row FAIL "$short" "${bms:--}" "$TEST_TIMEOUT" "$why; $p passed, $f failed")")
  fi
done
bin_table "aarch64 (QEMU VM, -smp $SMP)" "${rows[@]}"
echo "qemu-lane: VM ${ms} ms of TIMEOUT=${TIMEOUT}s ($((ms / 10 / TIMEOUT))%)"
grep -q '^@@LANE DONE' "$LOG" || { echo "FAIL: guest did not finish (qemu rc=$qrc)"; status=1; }
if [ -n "$SUMMARY_FILE" ]; then
  printf 'binaries=%s\npassed=%s\nfailed=%s\ntests_passed=%s\ntests_failed=%s\ntests_ignored=%s\nms=%s\nstatus=%s\n' \
    ${#names[@]} $bpass $bfail $tpass $tfail $tign $ms $status > "$SUMMARY_FILE"
fi
[ "$KEEP" = 1 ] && echo "qemu-lane: kept $W (console.log)" >&2
exit $status
