#!/usr/bin/env bash
# Runs fuzz targets (all, or those named as arguments) for SECONDS_PER_TARGET (default 600)
# each, JOBS at a time (default 2), niced, and appends one summary line per target to
# fuzz/results.txt. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Crashes land in fuzz/artifacts/<target>/. Builds once, then runs the binaries directly, so
# editing the crate meanwhile neither rebuilds nor changes what is being fuzzed.
set -uo pipefail
cd "$(dirname "$0")"
secs="${SECONDS_PER_TARGET:-600}"
jobs="${JOBS:-2}"
targets="${*:-$(cargo +nightly fuzz list)}"
cargo +nightly fuzz build -O >/dev/null
run() {
  local t=$1
  mkdir -p corpus/"$t" logs artifacts/"$t"
  nice -n 15 target/x86_64-unknown-linux-gnu/release/"$t" -artifact_prefix=artifacts/"$t"/ \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
    corpus/"$t" >logs/"$t".log 2>&1
  local rc=$?
  local execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' logs/"$t".log | grep -o '[0-9]*$')
  local cov=$(grep -o 'cov: [0-9]*' logs/"$t".log | tail -1)
  echo "$(date -u +%FT%TZ) $t rc=$rc seconds=$secs execs=${execs:-?} ${cov:-} corpus=$(ls corpus/"$t" | wc -l)" >>results.txt
}
export -f run
export secs
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run {}'
cat results.txt
