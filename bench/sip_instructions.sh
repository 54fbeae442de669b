#!/bin/bash
# Instructions per business-initiated SIP flow of the wacall in checkout $1 (default: this one), counted by
# callgrind: (Ir(long run) - Ir(short run)) / (flows(long) - flows(short)), at 5 flows/s with wacall under
# valgrind (bench/sip_flows.py, WACALL_BENCH_PREFIX). Steadier than CPU time on a shared machine (about ±1-2 %
# between runs of one tree, against ±10-15 %), so it compares changes; it counts no kernel time (syscalls).
# Usage: bench/sip_instructions.sh [checkout] [short_seconds=8] [long_seconds=20]   (needs valgrind: apt-get install valgrind)
set -e
dir=$(cd "${1:-$(dirname "$0")/..}" && pwd); S1=${2:-8}; S2=${3:-20}
tmp=$(mktemp -d /tmp/sip-instructions.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
run() {
  local secs=$1 out=$tmp/run$1
  mkdir -p "$out"
  (cd "$dir" && PYTHONHASHSEED=0 WACALL_BENCH_PREFIX="valgrind --tool=callgrind --callgrind-out-file=$out/cg.%p" \
     .venv/bin/python bench/sip_flows.py --target wacall --users 5 --rates 5 --seconds "$secs" --no-pin \
       --workdir "$out/work" > "$out/log" 2>&1) || { echo "bench/sip_flows.py failed: $(tail -3 "$out/log")" >&2; exit 1; }
  local ir flows
  ir=$(grep -h "^summary:\|^totals:" "$out"/cg.* | head -1 | awk '{print $2}')
  flows=$(grep -oP "calls +\K[0-9]+(?=/)" "$out/log" | head -1)
  echo "$ir $flows"
}
read -r ir1 f1 < <(run "$S1")
read -r ir2 f2 < <(run "$S2")
python3 -c "print(f'$dir: {($ir2-$ir1)/($f2-$f1)/1e3:.0f} k instructions per flow (runs of $f1 and $f2 flows: $ir1 and $ir2 instructions)')"
