#!/usr/bin/env bash
# Offline vulnerability check.
#
# These machines reach the Go module proxy but not vuln.go.dev, so the
# database is built locally from the OSV files that the golang.org/x/vulndb
# module ships (data/osv), at the version pinned in tools/vulndb/go.mod, with
# that module's own cmd/indexdb. The result is cached per vulndb version under
# $VULNDB_CACHE (default .cache/vulndb, gitignored), so reruns skip the build.
#
# govulncheck (pinned in tools/go.mod) then scans each of the repository's
# modules (MODULES, default: every go.mod the workspace uses) and
# tools/vulnreport reads its JSON: exit 1 if our code reaches a vulnerable
# symbol of a required module; standard-library findings are printed but do
# not fail, because the Go toolchain of whoever builds the binary fixes them,
# not our go.mod. Tools run with GOWORK=off: go tool -modfile refuses
# workspace mode, and each module is judged by its own go.mod.
#
# Bump the database with:
#   go get -C tools/vulndb -tool golang.org/x/vulndb/cmd/indexdb@master
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

go=${GO:-go}
export GOWORK=off
modules=${MODULES:-.}
vulndb_mod="$root/tools/vulndb/go.mod"
cache=${VULNDB_CACHE:-$root/.cache/vulndb}
report=${VULN_REPORT:-$root/.cache/govulncheck.json}

# The pinned vulndb module carries the data; its directory in the module cache
# is where data/osv lives.
$go mod download -modfile="$vulndb_mod" golang.org/x/vulndb
version=$($go list -modfile="$vulndb_mod" -m -f '{{.Version}}' golang.org/x/vulndb)
src=$($go list -modfile="$vulndb_mod" -m -f '{{.Dir}}' golang.org/x/vulndb)
db="$cache/$version"

if [[ ! -f "$db/index/db.json" ]]; then
	echo "vuln: indexing $(find "$src/data/osv" -name '*.json' | wc -l) OSV entries of golang.org/x/vulndb@$version"
	mkdir -p "$cache"
	tmp=$(mktemp -d "$cache/.build.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	$go tool -modfile="$vulndb_mod" indexdb -vulns "$src/data/osv" -out "$tmp/db"
	# Publish atomically: an interrupted build never looks like a database.
	rm -rf "$db"
	mv "$tmp/db" "$db"
else
	echo "vuln: using cached database $db"
fi

mkdir -p "$(dirname "$report")"
for mod in $modules; do
	echo "vuln: module $mod"
	# -format json exits 0 whatever it finds; the verdict is vulnreport's.
	(cd "$root/$mod" && $go tool -modfile="$root/tools/go.mod" govulncheck -db "file://$db" -format json ./...) >"$report"
	$go run -C "$root/tools" ./vulnreport <"$report"
done
