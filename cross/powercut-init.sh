#!/bin/busybox sh
# /init of the power-cut lane's guest (cross/powercut.sh puts it in the
# initramfs). Kernel command line: pc.mode=cut|final pc.boot=K pc.seed=S
# pc.rate=R pc.scale=F pc.bundle=NAME|- pc.nosync=0|1 pc.cutus=US|-
#   pc.cutus: cut the power from inside (sysrq b: reboot without syncing, as
#   the host's SIGKILL of QEMU) US microseconds after the agent's journal
#   compaction created its temp journal (any new or changed
#   <state_dir>/journal*tmp*), to land cuts inside the compaction
#   cut:   mount the disk, (drop the bundle NAME into the inbox), start
#          `exportd run` and the recorder (`exportd simulate --fsync`), print
#          "@@PC RUNNING" and wait for the host to kill QEMU;
#   final: mount the disk, `run --until-idle`, `audit verify`, count export
#          rows, `run --until-idle` again, count again, print "@@PC RESULT ...",
#          unmount cleanly, "@@PC DONE", power off.
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run; chmod 1777 /tmp
off() { sync; poweroff -f; echo o > /proc/sysrq-trigger; sleep 5; }
up() { cut -d' ' -f1 /proc/uptime; }
mode=cut; boot=0; seed=1; rate=4; scale=0.05; bundle=-; nosync=0; cutus=-
for a in $(cat /proc/cmdline); do
  case $a in
    pc.mode=*) mode=${a#*=} ;; pc.boot=*) boot=${a#*=} ;; pc.seed=*) seed=${a#*=} ;;
    pc.rate=*) rate=${a#*=} ;; pc.scale=*) scale=${a#*=} ;; pc.bundle=*) bundle=${a#*=} ;;
    pc.nosync=*) nosync=${a#*=} ;; pc.cutus=*) cutus=${a#*=} ;;
  esac
done
for m in virtio_ring virtio virtio_mmio virtio_blk; do
  insmod /lib/modules/$m.ko || { echo "@@PC FAIL insmod $m"; off; }
done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda /pc || { echo "@@PC FAIL mount /dev/vda"; off; }
echo "@@PC MOUNTED boot=$boot up=$(up)"
C=/pc/exportd.toml

if [ "$mode" = cut ]; then
  # A folder target may need its marker (`exportd target init`, where the
  # binary has it): written once, before the first run.
  if [ ! -e /pc/.target-init-tried ] && exportd --help 2>&1 | grep -q 'target init'; then
    exportd target init --config $C --target archive > /tmp/ti.log 2>&1
    echo "@@PC NOTE target init: $(tr '\n' ' ' < /tmp/ti.log)"
    touch /pc/.target-init-tried; sync
  fi
  if [ "$bundle" != - ]; then
    # as a careful transport does: a dot name, fsync, rename, fsync the folder
    mkdir -p /pc/state/inbox
    cp /bundles/$bundle /pc/state/inbox/.$bundle && sync -d /pc/state/inbox/.$bundle &&
      mv /pc/state/inbox/.$bundle /pc/state/inbox/$bundle && sync /pc/state/inbox
    echo "@@PC BUNDLE $bundle dropped up=$(up)"
  fi
  if [ "$cutus" != - ]; then
    # a temp journal left by an earlier cut (seconds older, at least a boot
    # ago) is not a new compaction: only a file newer than the stamp counts
    # (`test -nt`, a shell builtin: no fork in the polling loop)
    touch -d "@$(( $(date +%s) - 1 ))" /tmp/stamp
    ( while :; do
        for f in /pc/state/journal*tmp*; do
          [ "$f" -nt /tmp/stamp ] || continue
          echo "@@PC CUT ${cutus} us after the journal compaction created ${f##*/}"
          usleep "$cutus"
          echo b > /proc/sysrq-trigger
        done
      done ) &
  fi
  pre=; [ "$nosync" = 1 ] && pre=/lib/libnosync.so   # the lane's self-test (NOSYNC=1)
  EXPORTD_LOG=info LD_PRELOAD=$pre exportd run --config $C &
  exportd simulate --spool /pc/spool --rate "$rate" --duration 100000 --users 20 \
    --seed $((seed * 1000 + boot)) --size-scale "$scale" --fsync --quiet &
  echo "@@PC RUNNING boot=$boot up=$(up)"
  while :; do sleep 1000; done
fi

# final
echo "@@PC FINAL up=$(up)"
rows() { cat /pc/state/audit/*.csv 2>/dev/null | grep -c "$1" ; }
EXPORTD_LOG=warn exportd run --until-idle --config $C; run=$?
exportd audit verify --config $C > /tmp/verify.txt 2>&1; verify=$?
[ $verify = 0 ] || { echo "@@PC VERIFY"; cat /tmp/verify.txt; }
n1=$(rows ';export;'); all1=$(rows '')
EXPORTD_LOG=warn exportd run --until-idle --config $C; rerun=$?
n2=$(rows ';export;'); all2=$(rows '')
exportd audit verify --config $C > /tmp/verify2.txt 2>&1; verify2=$?
[ $verify2 = 0 ] || { echo "@@PC VERIFY (after the second run)"; cat /tmp/verify2.txt; }
[ $verify = 0 ] && verify=$verify2
ls /pc/state/inbox/accepted 2>/dev/null | grep -vc '\.reason$' > /tmp/acc || true
ls /pc/state/inbox/rejected 2>/dev/null | grep -vc '\.reason$' > /tmp/rej || true
left=$(ls /pc/state/inbox 2>/dev/null | grep -v -e '^accepted$' -e '^rejected$' | tr '\n' ' ')
echo "@@PC INBOX accepted=$(cat /tmp/acc) rejected=$(cat /tmp/rej) left=[${left}]"
for r in /pc/state/inbox/rejected/*.reason; do
  [ -e "$r" ] && echo "@@PC INBOX rejected ${r##*/}: $(head -c 300 "$r")"
done
echo "@@PC RESULT run=$run verify=$verify rerun=$rerun export_rows=$n1 export_rows_again=$n2 rows=$all1 rows_again=$all2 up=$(up)"
umount /pc && echo "@@PC DONE"
off
