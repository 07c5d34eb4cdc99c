#!/usr/bin/env bash
# Runs every fuzz target of the repository's packages (PKGS, default ./...)
# briefly: FUZZTIME each (default 10s).
#
# Targets are discovered, not listed: `go test -list '^Fuzz' ./...` prints the
# matching names of each package followed by that package's "ok <path>" line,
# so new Fuzz* functions are picked up without touching this script.
# A failing input is written under the package's testdata/fuzz/ by go test,
# which makes it a regression seed once committed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
go=${GO:-go}
fuzztime=${FUZZTIME:-10s}
read -r -a pkgs <<<"${PKGS:-./...}"

list=$($go test -list '^Fuzz' "${pkgs[@]}")

targets=() # "package target" pairs
pending=()
while read -r first second _; do
	case $first in
	Fuzz*) pending+=("$first") ;;
	ok)
		for t in ${pending[@]+"${pending[@]}"}; do targets+=("$second $t"); done
		pending=()
		;;
	'?') ;; # package without test files
	*)
		echo "fuzz.sh: unexpected line from go test -list: $first $second" >&2
		exit 2
		;;
	esac
done <<<"$list"

if ((${#targets[@]} == 0)); then
	echo "fuzz.sh: no fuzz targets found"
	exit 0
fi

echo "fuzz.sh: ${#targets[@]} target(s), $fuzztime each"
for pt in "${targets[@]}"; do
	read -r pkg target <<<"$pt"
	echo "fuzz.sh: $pkg $target"
	$go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
done
