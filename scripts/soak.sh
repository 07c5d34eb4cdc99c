#!/usr/bin/env bash
# Long mode of the robustness suite (internal/robustness/, RELIABILITY.md): every
# robustness test at its long size, under the race detector:
#   - TestSoak: SOAK_CYCLES disconnect cycles (default 1000) carrying about
#     SOAK_SIGNALS signals (default 10000), checked by the history checker;
#   - TestFloodOfUniqueTerminates: 1,000,000 unique terminates;
#   - TestRejectStorm: a 60 s window;
#   - the fault scenarios, the herd, the checker's own tests;
#   - then the jetstream module's TestDurability: DURABILITY_FAULTS faults
#     (default 1000) across the gateway link, the bus link and the NATS
#     server, with halts published during each, both sources feeding one
#     store (jetstream/durability_test.go).
# It prints the soak's figures (lines starting with SOAK) and fails if any
# test fails, including any guarantee violation. Loopback only; bounded by
# SOAK_TIMEOUT (default 25m).
#
#   scripts/soak.sh                          # the run RELIABILITY.md records
#   SOAK_CYCLES=100 SOAK_SIGNALS=1000 scripts/soak.sh   # a quicker one
#   SOAK_PARTS=durability scripts/soak.sh   # one part: robustness, durability
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
go=${GO:-go}
cycles=${SOAK_CYCLES:-1000}
signals=${SOAK_SIGNALS:-10000}
timeout=${SOAK_TIMEOUT:-25m}
faults=${DURABILITY_FAULTS:-1000}
parts=${SOAK_PARTS:-robustness durability}

log=$(mktemp "${TMPDIR:-/tmp}/opcontrol-soak.XXXXXX")

echo "soak.sh: $($go version); $(nproc 2>/dev/null || echo '?') cores; parts=$parts cycles=$cycles signals=$signals faults=$faults timeout=$timeout"
start=$SECONDS
status=0
for part in $parts; do
	case $part in
	robustness)
		OPCONTROL_ROBUSTNESS_LONG=1 OPCONTROL_SOAK_CYCLES=$cycles OPCONTROL_SOAK_SIGNALS=$signals \
			$go test -race -count=1 -v -timeout "$timeout" ./internal/robustness -args -robustness.long >>"$log" 2>&1 || status=$?
		;;
	durability)
		(cd jetstream && OPCONTROL_DURABILITY_FAULTS=$faults \
			$go test -race -count=1 -v -timeout "$timeout" -run '^TestDurability$' .) >>"$log" 2>&1 || status=$?
		;;
	*)
		echo "soak.sh: unknown part $part (want robustness, durability)" >&2
		exit 2
		;;
	esac
done

echo
echo "=== results ($((SECONDS - start))s wall)"
grep -E '^(--- |ok |FAIL|panic:)' "$log" || true
echo
echo "=== figures"
grep -E '^SOAK ' "$log" | sort -u || true
grep -E 'durability_test.go:[0-9]+: ' "$log" | sed 's/^ *//' || true
grep -E 'unique terminates in|process CPU|attempts in|subscribers back within|half-open link noticed|refused [0-9]+ times' "$log" | sed 's/^ *//' || true
if ((status != 0)); then
	# The output of the failed tests only: -v interleaves tests, and names
	# the one speaking in "=== RUN/NAME/CONT" lines.
	echo
	echo "=== output of failed tests"
	awk '
		/^=== (RUN|NAME|CONT|PAUSE) / { cur = $3; next }
		/^ *--- FAIL: / { failed[$3] = 1 }
		/^ *--- (PASS|SKIP|FAIL): / { next }
		{ out[cur] = out[cur] $0 "\n" }
		END { for (t in failed) if (t in out) printf "--- %s\n%s", t, out[t] }
	' "$log" | head -400
	echo "soak.sh: FAILED (exit $status); full log: $log" >&2
	exit "$status"
fi
rm -f "$log"
