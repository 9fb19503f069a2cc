#!/bin/bash
# cross/powercut.sh - the power-cut lane: exportd on an ext4 virtio disk in an
# aarch64 QEMU VM, with a recorder writing records, killed (SIGKILL of QEMU:
# the guest's page cache is lost, as in a power cut) at seeded random moments,
# booted again from the same disk, N times; then one clean boot drains the
# backlog (`run --until-idle`), verifies the audit chain and runs the agent
# once more (nothing new may be exported), and the host checks the disk's
# content (examples/powercut_check.rs). Normally called by `cross/build powercut`.
#
# Usage: powercut.sh --exportd AARCH64_BIN --host-exportd BIN --checker BIN
#                    [--cuts N] [--seed S]
# Last line: "powercut: N cuts, D due copies, L lost, X duplicated, P partial,
#   E extra audit rows, audit verify ok|FAILED"; exit 0 when all are 0 and
#   verify is ok, 1 otherwise (also: the guest did not finish), 2 setup error.
# Env knobs: CACHE_DIR (~/.cache/qemu-lane, shared with qemu-lane.sh) MEM (512)
#   SMP (2) CPU (cortex-a72) IMG_MB (256) RATE (records/s of the recorder, 4)
#   SIZE_SCALE (0.05) MAX_DELAY_MS (15000: latest cut after the agent started)
#   BUNDLE_EVERY (4: every 4th boot drops a signed bundle into the inbox;
#   0 = never) COMPACT_EVERY (4: every 4th boot, 4, 8, ..., the guest cuts
#   itself 0-30 ms after the startup journal compaction began; 0 = never) BOOT_TIMEOUT (120 s to reach the running state) FINAL_TIMEOUT
#   (900 s) FSCK_EACH (1: e2fsck a copy of the image after every cut)
#   KEEP (0: keep the work dir: image, console logs) VERBOSE (0: 1 = console
#   of every boot on stdout) SYSROOT (/usr/aarch64-linux-gnu) NOSYNC (0: 1 =
#   self-test, the agent's fsync/fdatasync do nothing, the lane must fail).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qemu-lane}
MEM=${MEM:-512}; SMP=${SMP:-2}; CPU=${CPU:-cortex-a72}; IMG_MB=${IMG_MB:-256}
RATE=${RATE:-4}; SIZE_SCALE=${SIZE_SCALE:-0.05}; MAX_DELAY_MS=${MAX_DELAY_MS:-15000}
BUNDLE_EVERY=${BUNDLE_EVERY:-4}; COMPACT_EVERY=${COMPACT_EVERY:-4}; BOOT_TIMEOUT=${BOOT_TIMEOUT:-120}
FINAL_TIMEOUT=${FINAL_TIMEOUT:-900}; FSCK_EACH=${FSCK_EACH:-1}
KEEP=${KEEP:-0}; VERBOSE=${VERBOSE:-0}; SYSROOT=${SYSROOT:-/usr/aarch64-linux-gnu}
USERS=20
die() { echo "powercut: $*" >&2; exit 2; }
for t in qemu-system-aarch64 cpio gzip dpkg-deb apt-get readelf timeout mkfs.ext4 e2fsck debugfs \
         aarch64-linux-gnu-strip; do
  command -v $t >/dev/null || die "missing $t (run .ci/install-cross.sh; e2fsprogs for mkfs/debugfs)"; done

CUTS=20; SEED=; A64=; HOSTX=; CHECKER=
while [ $# -gt 0 ]; do
  case $1 in
    --cuts) CUTS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --exportd) A64=$2; shift 2 ;;
    --host-exportd) HOSTX=$2; shift 2 ;;
    --checker) CHECKER=$2; shift 2 ;;
    *) die "unknown argument $1 (usage: $0 --exportd BIN --host-exportd BIN --checker BIN [--cuts N] [--seed S])" ;;
  esac
done
[[ $CUTS =~ ^[0-9]+$ ]] || die "--cuts wants a number, got $CUTS"
[ -n "$SEED" ] || SEED=$(( $(date +%s) % 100000 ))
[[ $SEED =~ ^[0-9]+$ ]] || die "--seed wants a number, got $SEED"
for b in "$A64" "$HOSTX" "$CHECKER"; do
  [ -n "$b" ] && [ -x "$b" ] || die "not an executable: '$b' (--exportd, --host-exportd, --checker)"; done

# 1. kernel, busybox (the aarch64 lane's cache) and the virtio modules
mkdir -p "$CACHE_DIR"
fetch_kernel() {  # the same files and layout as cross/qemu-lane.sh, plus modules/
  local pkg=${KERNEL_PKG:-} dl
  if [ -s "$CACHE_DIR/vmlinuz" ] && [ -s "$CACHE_DIR/packages" ]; then
    # the exact package the cached kernel came from: its modules must match
    pkg=$(sed -n 's/^\(linux-image-[^_]*\)_\([^_]*\)_arm64\.deb$/\1:arm64=\2/p' "$CACHE_DIR/packages" | head -1)
    [ -n "$pkg" ] || die "cannot tell the cached kernel's package from $CACHE_DIR/packages"
  fi
  [ -n "$pkg" ] || pkg=$(apt-cache depends linux-image-cloud-arm64:arm64 |
      awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$pkg" ] || die "cannot resolve the kernel package (dpkg --add-architecture arm64?)"
  dl=$(mktemp -d)
  if ! ( cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" busybox-static:arm64 ) >&2; then
    # the cached kernel's version left the archive: take the current one, for both lanes
    pkg=$(apt-cache depends linux-image-cloud-arm64:arm64 | awk '/Depends: linux-image-/{print $2; exit}')
    echo "powercut: cannot download the cached kernel's package; replacing the cache with $pkg" >&2
    rm -f "$CACHE_DIR/vmlinuz" "$dl"/*.deb
    ( cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" busybox-static:arm64 ) >&2 ||
      { rm -rf "$dl"; die "apt-get download $pkg failed"; }
  fi
  mkdir "$dl/x"; for d in "$dl"/*.deb; do dpkg-deb -x "$d" "$dl/x"; done
  mkdir -p "$CACHE_DIR/modules.tmp"
  for m in virtio_ring virtio virtio_mmio virtio_blk; do
    f=$(find "$dl/x/lib/modules" -name "$m.ko" | head -1)
    [ -n "$f" ] || { rm -rf "$dl"; die "module $m.ko not in $pkg"; }
    cp "$f" "$CACHE_DIR/modules.tmp/"
  done
  if [ ! -s "$CACHE_DIR/vmlinuz" ]; then
    cp "$dl"/x/boot/vmlinuz-* "$CACHE_DIR/vmlinuz.tmp"; cp "$dl"/x/bin/busybox "$CACHE_DIR/busybox"
    cp "$dl"/x/boot/config-* "$CACHE_DIR/config"; ls "$dl"/*.deb | xargs -n1 basename > "$CACHE_DIR/packages"
    mv "$CACHE_DIR/vmlinuz.tmp" "$CACHE_DIR/vmlinuz"
  fi
  grep linux-image "$CACHE_DIR/packages" > "$CACHE_DIR/modules.tmp/package"
  rm -rf "$CACHE_DIR/modules"; mv "$CACHE_DIR/modules.tmp" "$CACHE_DIR/modules"; rm -rf "$dl"
}
# modules/package names the kernel package the modules came from: it must be vmlinuz's
[ -s "$CACHE_DIR/vmlinuz" ] && [ -s "$CACHE_DIR/busybox" ] && [ -s "$CACHE_DIR/modules/virtio_blk.ko" ] &&
  [ "$(cat "$CACHE_DIR/modules/package" 2>/dev/null)" = "$(grep linux-image "$CACHE_DIR/packages" 2>/dev/null)" ] ||
  fetch_kernel

# 2. work dir: image content, host-side config, bundles
W=$(mktemp -d /tmp/powercut.XXXXXX)
[ "$KEEP" = 1 ] || trap 'rm -rf "$W"' EXIT
G=/pc   # where the guest mounts the disk
config() {  # ROOT: the appliance's exportd.toml with every path under ROOT
  local r=$1 i
  printf 'agent_id = "powercut"\nspool = ["%s/spool"]\nstate_dir = "%s/state"\nkeys_dir = "%s/keys"\n' "$r" "$r" "$r"
  printf 'incomplete_grace_s = 30\n\n'
  printf '[[trust]]\nkeyid = "pc-central"\npublic_key = "%s"\nroles = ["config"]\n\n' "$(cat "$W/pc-central.pub")"
  printf '[[targets]]\nid = "archive"\nkind = "fs"\npath = "%s/archive"\n\n' "$r"
  printf '[[policies]]\nid = "p-all"\nname = "Everything to the archive"\ntargets = ["archive"]\n'
  printf 'settings = { decrypt = false, im_attachments = true }\n\n'
  for i in $(seq 1 $USERS); do
    printf '[[users]]\nid = "u-%04d"\nname = "Trader %04d"\nemail = "trader%04d@corp.example"\n' $i $i $i
    printf 'extensions = ["+1212555%04d", "sip:trader%04d@corp.example", "TRD-%04d"]\npolicies = ["p-all"]\n\n' $i $i $i
  done
}
bundle_payload() {  # VERSION: the same model as config() (due copies do not change), a new version
  local v=$1 i sep=
  printf '{"version": %s, "issued_at": "%s",\n' "$v" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf ' "targets": [{"id": "archive", "kind": "fs", "path": "%s/archive"}],\n' "$G"
  printf ' "policies": [{"id": "p-all", "name": "Everything to the archive", "enabled": true, "targets": ["archive"],\n'
  printf '   "settings": {"decrypt": false, "im_attachments": true}}],\n "users": ['
  for i in $(seq 1 $USERS); do
    printf '%s\n  {"id": "u-%04d", "name": "Trader %04d", "email": "trader%04d@corp.example",' "$sep" $i $i $i
    printf ' "extensions": ["+1212555%04d", "sip:trader%04d@corp.example", "TRD-%04d"], "policies": ["p-all"]}' $i $i $i
    sep=,
  done
  printf ']}\n'
}
(cd "$W" && "$HOSTX" keygen pc-central >/dev/null) || die "exportd keygen failed"
D=$W/disk; mkdir -p "$D/spool" "$D/state" "$D/archive" "$D/keys"; chmod 700 "$D/keys" "$D/state"
config "$G" > "$D/exportd.toml"
IMG=$W/disk.img
mkfs.ext4 -q -F -L powercut -d "$D" "$IMG" "${IMG_MB}M" >/dev/null || die "mkfs.ext4 -d failed"
H=$W/host; mkdir -p "$H"; config "$H" > "$W/host.toml"

# 3. initramfs
R=$W/root
mkdir -p $R/bin $R/lib/modules $R/etc $R/proc $R/sys $R/dev $R/tmp $R/run $R/root $R/pc $R/bundles
cp "$CACHE_DIR/busybox" $R/bin/busybox
cp "$CACHE_DIR"/modules/*.ko $R/lib/modules/
printf 'root:x:0:0:root:/root:/bin/sh\n' > $R/etc/passwd; printf 'root:x:0:\n' > $R/etc/group
declare -A seen; queue=()
add_needed() { local f; for f in $(readelf -d "$1" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    [ -n "${seen[$f]:-}" ] && continue; seen[$f]=1
    [ -e "$SYSROOT/lib/$f" ] || die "library $f (needed by $1) not found in $SYSROOT/lib"
    cp -L "$SYSROOT/lib/$f" $R/lib/; queue+=("$SYSROOT/lib/$f"); done; }
cp -L "$A64" $R/bin/exportd; aarch64-linux-gnu-strip $R/bin/exportd 2>/dev/null || true
add_needed "$A64"
while [ ${#queue[@]} -gt 0 ]; do q=${queue[0]}; queue=("${queue[@]:1}"); add_needed "$q"; done
[ -e $R/lib/ld-linux-aarch64.so.1 ] || cp -L "$SYSROOT/lib/ld-linux-aarch64.so.1" $R/lib/
# signed bundles, one per bundle boot, versions increasing
nb=0
if [ "$BUNDLE_EVERY" -gt 0 ]; then
  for ((k = 1; k <= CUTS; k++)); do
    [ $((k % BUNDLE_EVERY)) = 2 ] || [ "$BUNDLE_EVERY" = 1 ] || continue
    bundle_payload $((100 + k)) > "$W/payload-$k.json"
    "$HOSTX" bundle sign --key "$W/pc-central.key" --keyid pc-central --type config \
      "$W/payload-$k.json" --out "$R/bundles/b$(printf %03d $k).json" >/dev/null 2>&1 ||
      die "exportd bundle sign failed for $W/payload-$k.json"
    nb=$((nb + 1))
  done
  if [ $nb -gt 0 ]; then
    "$HOSTX" bundle verify --config "$W/host.toml" "$(ls $R/bundles/* | head -1)" >/dev/null 2>&1 ||
      die "the lane's own bundle does not verify: $HOSTX bundle verify --config $W/host.toml $(ls $R/bundles/* | head -1)"
  fi
fi
# NOSYNC=1: the lane's self-test. The agent (not the recorder) runs with an
# LD_PRELOAD shim whose fsync/fdatasync return 0 without syncing: the lane
# must then FAIL (a missing fsync is what it exists to find).
if [ "${NOSYNC:-0}" = 1 ]; then
  command -v aarch64-linux-gnu-gcc >/dev/null || die "NOSYNC=1 needs aarch64-linux-gnu-gcc"
  printf '%s\n' '/* powercut NOSYNC=1: fsync and fdatasync that do nothing */' \
    'int fsync(int fd) { (void)fd; return 0; }' 'int fdatasync(int fd) { (void)fd; return 0; }' > "$W/nosync.c"
  aarch64-linux-gnu-gcc -shared -fPIC -O1 -o $R/lib/libnosync.so "$W/nosync.c" || die "building the NOSYNC shim failed"
fi
cp "$HERE/powercut-init.sh" $R/init; chmod +x $R/init
( cd $R && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 ) | gzip -1 > $W/initrd.gz

# 4. boots and cuts
RANDOM=$SEED
rand() { echo $(( (RANDOM << 15 | RANDOM) % $1 )); }   # 0..$1-1, from the seeded sequence
QPID=
trap '[ -n "$QPID" ] && kill -KILL $QPID 2>/dev/null; [ "$KEEP" = 1 ] || rm -rf "$W"' EXIT
boot() {  # LOG ARGS...: start QEMU in the background on the image
  local log=$1; shift
  qemu-system-aarch64 -M virt -cpu "$CPU" -smp "$SMP" -m "$MEM" -nographic -nic none -no-reboot \
    -kernel "$CACHE_DIR/vmlinuz" -initrd "$W/initrd.gz" \
    -drive "file=$IMG,format=raw,if=none,id=pcdisk,cache=writeback" -device virtio-blk-device,drive=pcdisk \
    -append "console=ttyAMA0 panic=-1 quiet loglevel=3 $*" </dev/null > "$log" 2>&1 &
  QPID=$!
}
ms() { date +%s%3N; }
echo "powercut: $CUTS cuts, seed $SEED (repeat: cross/build powercut --cuts $CUTS --seed $SEED);" \
     "recorder $RATE records/s, cut 0-$MAX_DELAY_MS ms after the agent started; $nb signed bundles;" \
     "kernel $(grep linux-image "$CACHE_DIR/packages" 2>/dev/null); work dir $W"
[ "${NOSYNC:-0}" = 1 ] && echo "powercut: NOSYNC=1: the agent runs with fsync/fdatasync disabled; this run MUST fail"
declare -a bstart bend bdelay
t_all=$(ms); fsck_bad=0; status=0; n_run=0; n_start=0; n_apply=0; n_exp=0; n_compact=0
for ((k = 1; k <= CUTS; k++)); do
  bundle=-; [ -e "$R/bundles/b$(printf %03d $k).json" ] && bundle=b$(printf %03d $k).json
  # a bundle boot: the cut within 4 s (the inbox is read at startup); else a
  # quarter of the cuts in the first 1 s (startup scan, journal compaction),
  # the rest anywhere up to MAX_DELAY_MS (exports in flight)
  if [ "$bundle" != - ]; then delay=$(rand 4000)
  elif [ "$(rand 4)" = 0 ]; then delay=$(rand 1000)
  else delay=$(rand "$MAX_DELAY_MS"); fi
  # every COMPACT_EVERY-th boot the guest cuts itself (sysrq b: reboot without
  # sync, QEMU exits) CUTUS microseconds after the agent's startup journal
  # compaction created its new journal file; the host's kill stays the fallback
  cutus=-; if [ "$COMPACT_EVERY" -gt 0 ] && [ $((k % COMPACT_EVERY)) = 0 ] && [ "$bundle" = - ]; then
    cutus=$(rand 30000); delay=$MAX_DELAY_MS; fi   # the host's kill only if the guest missed it
  log=$W/boot-$k.log; t0=$(ms)
  boot "$log" "pc.mode=cut pc.boot=$k pc.seed=$SEED pc.rate=$RATE pc.scale=$SIZE_SCALE pc.bundle=$bundle" \
    "pc.nosync=${NOSYNC:-0} pc.cutus=$cutus"
  until grep -q '^@@PC RUNNING' "$log" 2>/dev/null; do
    if ! kill -0 $QPID 2>/dev/null; then
      tr -d '\r' < "$log" | tail -n 30 >&2; die "boot $k: the guest stopped before running the agent (console above)"; fi
    if [ $(( $(ms) - t0 )) -gt $((BOOT_TIMEOUT * 1000)) ]; then
      kill -KILL $QPID; tr -d '\r' < "$log" | tail -n 30 >&2; die "boot $k: not running after ${BOOT_TIMEOUT}s"; fi
    sleep 0.05
  done
  t1=$(ms)
  while kill -0 $QPID 2>/dev/null && [ $(( $(ms) - t1 )) -lt "$delay" ]; do sleep 0.02; done
  self_cut=0; kill -0 $QPID 2>/dev/null || self_cut=1   # QEMU exited: the guest cut itself
  kill -KILL $QPID 2>/dev/null || true; wait $QPID 2>/dev/null || true; QPID=
  bstart[k]=$t0; bend[k]=$(ms); bdelay[k]=$delay
  # where the cut landed, from the agent's log on the console
  tr -d '\r' < "$log" > "$log.txt"
  if [ "$self_cut" = 1 ] && [ "$cutus" != - ]; then
    phase="cut by the guest (sysrq b) ${cutus} us after the journal compaction began"; n_compact=$((n_compact + 1))
    delay=$(( bend[k] - t1 )); bdelay[k]=$delay   # about: when the host saw QEMU exit
  elif [ "$self_cut" = 1 ]; then
    tail -n 30 "$log.txt" >&2; die "boot $k: the guest stopped by itself (console above)"
  elif grep -q 'exportd ready' "$log.txt"; then phase=running; n_run=$((n_run + 1))
  else phase="startup (scan, compaction, inbox)"; n_start=$((n_start + 1)); fi
  [ "$cutus" = - ] || [ "$self_cut" = 1 ] || phase="$phase (no compaction seen before the host's cut)"
  if [ "$bundle" != - ]; then
    if grep -q 'configuration version' "$log.txt"; then phase="$phase, bundle $bundle applied"
    elif grep -q 'inbox bundle accepted' "$log.txt"; then phase="$phase, IN bundle $bundle apply"; n_apply=$((n_apply + 1))
    else phase="$phase, bundle $bundle not yet read"; fi
  fi
  nexp=$(grep -c ' exported' "$log.txt" || true); n_exp=$((n_exp + nexp))
  fs=
  if [ "$FSCK_EACH" = 1 ]; then  # replay ext4's journal on a copy, then a strict check
    cp --sparse=always "$IMG" "$W/fsck.img"
    e2fsck -fy "$W/fsck.img" >/dev/null 2>&1 || true
    if e2fsck -fn "$W/fsck.img" > "$W/fsck-$k.txt" 2>&1; then fs=", fsck ok"
    else fs=", FSCK FAILED ($W/fsck-$k.txt)"; fsck_bad=$((fsck_bad + 1)); fi
    rm -f "$W/fsck.img"
  fi
  printf 'powercut: cut %d/%d at %d ms after the agent started (boot %d ms), %s; %d exported in this boot%s\n' \
    $k $CUTS $delay $((t1 - t0)) "$phase" "$nexp" "$fs"
  [ "$VERBOSE" = 1 ] && cat "$log.txt"
done

echo "powercut: cuts landed: $n_start during the agent's startup, $n_compact in its startup journal compaction" \
     "(guest-triggered), $n_run while it ran ($n_apply between a bundle's acceptance and its model in force);" \
     "$n_exp exports logged before the cuts"

# 5. the final boot: drain, verify, run again
log=$W/final.log; t0=$(ms); t_final=$t0
boot "$log" "pc.mode=final pc.boot=final pc.seed=$SEED"
while kill -0 $QPID 2>/dev/null; do
  if [ $(( $(ms) - t0 )) -gt $((FINAL_TIMEOUT * 1000)) ]; then
    kill -KILL $QPID 2>/dev/null || true; echo "powercut: final boot TIMEOUT after ${FINAL_TIMEOUT}s" >&2; status=1
  fi
  sleep 0.2
done
wait $QPID 2>/dev/null || true; QPID=
tr -d '\r' < "$log" > "$log.txt"
[ "$VERBOSE" = 1 ] && cat "$log.txt"
res=$(grep '^@@PC RESULT' "$log.txt" | tail -1 || true)
echo "powercut: final boot $(( $(ms) - t0 )) ms: ${res#@@PC RESULT }"
grep -E '^@@PC (INBOX|NOTE)' "$log.txt" | sed 's/^@@PC /powercut: /' || true
if grep -q '^@@PC INBOX rejected .*already in force' "$log.txt"; then
  echo "powercut: WARNING: a bundle was put in force, then reported rejected as a replay: a cut fell between the" \
       "apply (version state durable) and the move to inbox/accepted/, and the next start read the file again" \
       "(a 'config' row and status say 'rejected' for the version in force; no copy is affected)"
fi
if grep -q '^@@PC INBOX .*left=\[..*\]' "$log.txt"; then
  echo "powercut: FAILED: bundles still in the inbox after the final run (neither accepted nor rejected; the agent's log in the boot logs says why)"
  status=1
fi
if [ -z "$res" ] || ! grep -q '^@@PC DONE' "$log.txt"; then
  echo "powercut: FAILED: the final boot did not finish (console: KEEP=1, $log.txt); last lines:"
  tail -n 30 "$log.txt"; status=1
fi
val() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $res"; }
verify=ok
[ "$(val verify)" = 0 ] || { verify=FAILED; grep -A5 '^@@PC VERIFY' "$log.txt" | head -8; }
[ "$(val run)" = 0 ] || { echo "powercut: FAILED: 'exportd run --until-idle' exited $(val run) after the cuts"; status=1; }
[ "$(val rerun)" = 0 ] || { echo "powercut: FAILED: the second 'run --until-idle' exited $(val rerun)"; status=1; }
if [ -n "$res" ] && [ "$(val export_rows)" != "$(val export_rows_again)" ]; then
  echo "powercut: FAILED: the second run exported again: $(val export_rows) export rows before it," \
       "$(val export_rows_again) after (journal out of step with the audit log)"; status=1
fi

# 6. the host's checks on the disk
if e2fsck -fn "$IMG" > "$W/fsck-final.txt" 2>&1; then :; else
  echo "powercut: FAILED: e2fsck -fn of the image after the clean final boot:"; tail -n 20 "$W/fsck-final.txt"; status=1
fi
[ "$fsck_bad" = 0 ] || { echo "powercut: FAILED: e2fsck found damage after $fsck_bad cuts"; status=1; }
for d in spool state archive; do
  debugfs -R "rdump /$d $H" "$IMG" > "$W/rdump-$d.txt" 2>&1 || die "debugfs rdump /$d failed: $(tail -3 "$W/rdump-$d.txt")"
  [ -d "$H/$d" ] || die "debugfs rdump /$d gave nothing: $(tail -3 "$W/rdump-$d.txt")"
done
mkdir -p "$H/keys"; chmod 700 "$H/keys"
set +e
"$CHECKER" --config "$W/host.toml" > "$W/check.txt" 2>&1; crc=$?
"$HOSTX" audit verify --config "$W/host.toml" > "$W/verify-host.txt" 2>&1; hvrc=$?
# The archive against the audit log and the signed checkpoints (issue 14):
# a cut between a checkpoint and the next row must leave it verifying.
# The accepted bundles name the guest's paths (/pc/archive): verify against
# a copy of the state without them, so the host config's model (the same
# policies, host paths) is the one in force.
rm -rf "$W/hv"; mkdir -p "$W/hv"; cp -a "$H/state" "$W/hv/state"; rm -rf "$W/hv/state/bundle"
sed "s#^state_dir = .*#state_dir = \"$W/hv/state\"#" "$W/host.toml" > "$W/hv.toml"
"$HOSTX" archive verify --config "$W/hv.toml" --quiet > "$W/archive-verify-host.txt" 2>&1; avrc=$?
set -e
boot_of() {  # "YYYY.MM.DD HH:MM:SS.mmm" (UTC, an audit row's ts): the boot it was written in
  local t j; t=$(date -u -d "$(sed 's/^\([0-9]*\)\.\([0-9]*\)\.\([0-9]*\)/\1-\2-\3/' <<<"$1")" +%s%3N 2>/dev/null) || { echo "?"; return; }
  for ((j = 1; j <= CUTS; j++)); do
    # the guest's clock runs up to ~0.5 s off the host's (RTC at QEMU start):
    # 2 s of slack, far less than a boot takes to reach the agent
    if [ "$t" -ge "${bstart[j]}" ] && [ "$t" -le $(( bend[j] + 2000 )) ]; then
      if grep -q "exported record=\"$2\"" "$W/boot-$j.log.txt"; then echo "boot $j"
      else echo "boot $j, cut ${bdelay[j]} ms after the agent started, before its 'exported' log line"; fi
      return; fi
  done
  [ "$t" -ge "$t_final" ] && { echo "the final boot"; return; }
  echo "between boots?"
}
while IFS= read -r line; do
  echo "powercut: $line"
  case $line in
    DUPLICATE\ record\ *) rec=${line#DUPLICATE record }; rec=${rec%% *}; n=0
      IFS=, read -ra tss <<<"${line##*rows at }"
      for ts in "${tss[@]}"; do n=$((n + 1)); echo "powercut:   row $n (${ts# }): $(boot_of "${ts# }" "$rec")"; done ;;
  esac
done < <(grep -v '^counts: ' "$W/check.txt" || true)
if grep -q '^DUPLICATE' "$W/check.txt"; then
  echo "powercut: a DUPLICATE whose first row was written in a boot cut before the record's 'exported' line:" \
       "the cut fell after the audit row was durable and before the journal entry was (the crash window of" \
       "README 'Crash window', issue 13 'one export row per copy'); the next boot found the same bytes and wrote a second row"
fi
counts=$(sed -n 's/^counts: //p' "$W/check.txt")
[ -n "$counts" ] || { cat "$W/check.txt"; die "the checker gave no counts (exit $crc)"; }
echo "powercut: checker: $counts"
[ "$hvrc" = 0 ] || { verify=FAILED; echo "powercut: audit verify on the host copy:"; cat "$W/verify-host.txt"; }
archive=ok
[ "$avrc" = 0 ] || { archive=FAILED; status=1; echo "powercut: archive verify on the host copy (exit $avrc):"; head -n 40 "$W/archive-verify-host.txt"; }
c() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$counts"; }
[ "$crc" = 0 ] || status=1
[ "$verify" = ok ] || status=1
secs=$(( ($(ms) - t_all) / 1000 ))
echo "powercut: $CUTS cuts and the final check in ${secs}s ($(( CUTS > 0 ? secs / (CUTS + 1) : secs ))s per boot); seed $SEED"
[ "$KEEP" = 1 ] && echo "powercut: kept $W (disk.img, boot-*.log.txt, final.log.txt, host/)"
echo "powercut: $CUTS cuts, $(c due) due copies, $(c lost) lost, $(c duplicated) duplicated, $(c partial) partial," \
     "$(c extra_rows) extra audit rows, audit verify $verify, archive verify $archive"
exit $status
