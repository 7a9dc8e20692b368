#!/usr/bin/env bash
# A fuzzing campaign: every cargo-fuzz target (or the ones named) runs for
# SECONDS_PER_TARGET seconds from its committed corpus, one after the
# other; what it finds is merged into fuzz/corpus/<target>, and the
# script prints per target the executions, crashes and coverage.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 600, all)
#
# Environment: RSS_LIMIT_MB (default 2048) and TIMEOUT (seconds per input,
# default 10) go to libFuzzer; COVERAGE=0 skips the coverage pass;
# KEEP_GOING=0 stops at the first crash. Needs the nightly toolchain and
# cargo-fuzz; llvm-cov comes from nightly's llvm-tools component, which the
# script adds with rustup when it is missing.
#
# A crash (or timeout, or out-of-memory) prints its artifact path under
# fuzz/artifacts/<target>/ and makes the script exit 1 once the remaining
# targets have run. Everything runs under `nice`. See docs/fuzzing.md.
set -euo pipefail

cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
rss_limit_mb=${RSS_LIMIT_MB:-2048}
timeout=${TIMEOUT:-10}
coverage=${COVERAGE:-1}
keep_going=${KEEP_GOING:-1}

case $seconds in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
	exit 2
	;;
esac

fuzz() { nice -n 10 cargo +nightly fuzz "$@"; }

if [ $# -gt 0 ]; then
	targets=("$@")
else
	mapfile -t targets < <(cargo +nightly fuzz list)
fi

host=$(rustc +nightly -vV | sed -n 's/^host: //p')
llvm_bin="$(rustc +nightly --print sysroot)/lib/rustlib/$host/bin"
if [ "$coverage" = 1 ] && [ ! -x "$llvm_bin/llvm-cov" ]; then
	echo "fuzz.sh: adding llvm-tools-preview to nightly for llvm-cov" >&2
	rustup component add llvm-tools-preview --toolchain nightly
fi

# Line coverage of the project's own crates (crates/) in one binary: of
# all their files, and of the files the target reached (any function run).
coverage_summary() {
	local bin=$1 profdata=$2
	if [ ! -x "$bin" ] || [ ! -f "$profdata" ]; then
		echo "(no coverage binary or data)"
		return
	fi
	"$llvm_bin/llvm-cov" report "$bin" -instr-profile="$profdata" "$PWD/crates" 2>/dev/null |
		awk '
			$1 == "TOTAL" { all = sprintf("%s of crates/ lines", $10) }
			NF >= 10 && $1 != "TOTAL" && $1 != "Filename" && $5 > $6 {
				files++; lines += $8; missed += $9
			}
			END {
				if (lines > 0) reached = sprintf(", %.1f%% of the %d files reached (%d of %d lines)",
					100 * (lines - missed) / lines, files, lines - missed, lines)
				print all reached
			}' || echo "(llvm-cov failed)"
}

work=$(mktemp -d "${TMPDIR:-/tmp}/tunsec-fuzz.XXXXXX")
failed=0
summary=()

for t in "${targets[@]}"; do
	corpus=fuzz/corpus/$t
	found=$work/$t
	log=$work/$t.log
	mkdir -p "$corpus" "$found" "fuzz/artifacts/$t"
	echo "== $t: ${seconds}s (log: $log)"
	# New inputs go to the first directory (scratch); the committed
	# corpus is only read.
	set +e
	fuzz run "$t" "$found" "$corpus" -- \
		-max_total_time="$seconds" -print_final_stats=1 \
		-rss_limit_mb="$rss_limit_mb" -timeout="$timeout" >"$log" 2>&1
	status=$?
	set -e
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
	rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
	artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
	crashes=0
	if [ "$status" -ne 0 ] || [ -n "$artifact" ]; then
		crashes=1
		failed=1
		echo "!! $t: CRASH (exit $status): ${artifact:-no artifact, see $log}"
		grep -m 5 -E "panicked at|ERROR: |SUMMARY: " "$log" | sed 's/^/   /' || true
	fi

	# Keep only what adds coverage.
	before=$(find "$corpus" -type f | wc -l)
	if [ -n "$(ls -A "$found")" ]; then
		fuzz run "$t" "$corpus" "$found" -- -merge=1 \
			-rss_limit_mb="$rss_limit_mb" -timeout="$timeout" >"$work/$t.merge.log" 2>&1 ||
			echo "!! $t: merge failed, see $work/$t.merge.log"
	fi
	after=$(find "$corpus" -type f | wc -l)

	cover="-"
	if [ "$coverage" = 1 ]; then
		if fuzz coverage "$t" "$corpus" >"$work/$t.coverage.log" 2>&1; then
			# cargo-fuzz names the instrumented binary as it runs it.
			bin=$(sed -n 's/^\(\/.*\/coverage\/.*\/'"$t"'\): Running .*/\1/p' "$work/$t.coverage.log" | head -n 1)
			cover=$(coverage_summary "$bin" "fuzz/coverage/$t/coverage.profdata")
		else
			cover="(coverage failed, see $work/$t.coverage.log)"
		fi
	fi

	line="$t: ${seconds}s, ${execs:-?} execs (${rate:-?}/s, peak RSS ${rss:-?} MB), crashes $crashes, corpus $before -> $after, coverage: $cover"
	echo "   $line"
	summary+=("$line")
	if [ "$crashes" = 1 ] && [ "$keep_going" = 0 ]; then
		break
	fi
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "$failed" = 1 ]; then
	echo "crashes found: logs kept in $work; artifacts under fuzz/artifacts/" >&2
	exit 1
fi
rm -rf "$work"
