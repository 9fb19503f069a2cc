# cross/lane-table.sh - sourced by cross/build and cross/qemu-lane.sh: the
# lanes' per-test-binary time table, so that each binary's margin to its time
# limit is visible in every CI log.

# bin_row VERDICT NAME MS TIMEOUT_S NOTE: one row (MS "-" when it did not run)
bin_row() {
  local ms=$3 s pct
  if [ "$ms" = - ]; then s=-; pct=-
  else s=$((ms / 1000)).$((ms % 1000 / 100)); pct=$((ms / 10 / $4))%; fi
  printf '%-4s %-30s %8s %6s %5s  %s' "$1" "$2" "$s" "$4" "$pct" "$5"
}

# bin_table TITLE ROW...: the rows, slowest first, then the lane's total; a
# binary past a third of its limit is flagged SLOW (too little margin for a
# loaded CI machine)
bin_table() {
  local title=$1; shift
  [ $# -gt 0 ] || return 0
  echo
  echo "== $title: time per test binary, slowest first (limit: its timeout, s)"
  printf '%-4s %-30s %8s %6s %5s  %s\n' "" binary seconds limit "%lim" tests
  printf '%s\n' "$@" | sort -k3,3 -g -r |
    awk '{pct = $5; sub(/%/, "", pct); if (pct + 0 > 33) print $0 "  SLOW"; else print; if ($3 != "-") t += $3}
         END {printf "%-4s %-30s %8.1f\n", "", "(sum)", t}'
}
