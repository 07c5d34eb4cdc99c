# Developer entry points. Every tool is pinned in a tools module and run with
# `go tool -modfile=…`, so nothing is installed by hand and the library's own
# go.mod stays free of tool dependencies:
#   tools/go.mod         buf, protoc-gen-go, govulncheck, benchstat
#   tools/lint/go.mod    golangci-lint (own module: its ~250 deps resolve
#                        exactly as in the release, whatever buf needs)
#   tools/vulndb/go.mod  golang.org/x/vulndb: OSV data + cmd/indexdb
# `make ci` runs the same steps as CI (.ci/run).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

GO ?= go
TOOLS_MOD := $(CURDIR)/tools/go.mod
LINT_MOD := $(CURDIR)/tools/lint/go.mod
VULNDB_MOD := $(CURDIR)/tools/vulndb/go.mod
# Tools run outside the workspace: `go tool -modfile` refuses workspace mode.
TOOL := GOWORK=off $(GO) tool
GOLANGCI := $(TOOL) -modfile=$(LINT_MOD) golangci-lint

# The repository's modules (go.work ties them together): the core module,
# and the modules that must stay out of it because they need NATS or are
# programs. PKGS names all their packages; `go test -race $(PKGS)` is the
# README's test command.
MODULES := . jetstream examples cmd
PKGS := ./... $(foreach m,$(filter-out .,$(MODULES)),./$(m)/...)
TEST_CMD := go test -race $(PKGS)

# Everything `generate` writes lives under these paths; `drift` checks them.
GENERATED_PATHS := proto testdata/wire

FUZZTIME ?= 10s
BENCH_COUNT ?= 6
BENCH_OUT ?= .cache/bench/new.txt
BENCH_BASE ?=

.PHONY: help tools generate drift lint fmt-check vet golangci tidy-check test test-cmd test-short bench vuln fuzz soak ci

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

tools: ## build (and cache) the pinned tools CI uses, so later steps time only their own work
	$(TOOL) -modfile=$(TOOLS_MOD) -n buf >/dev/null
	$(TOOL) -modfile=$(TOOLS_MOD) -n protoc-gen-go >/dev/null
	$(TOOL) -modfile=$(TOOLS_MOD) -n govulncheck >/dev/null
	$(TOOL) -modfile=$(LINT_MOD) -n golangci-lint >/dev/null
	$(TOOL) -modfile=$(VULNDB_MOD) -n indexdb >/dev/null

generate: ## regenerate every generated file: *.pb.go and testdata/wire vectors
	# buf.gen.yaml runs protoc-gen-go through tools/go.mod, relative to proto/.
	cd proto && $(TOOL) -modfile=$(TOOLS_MOD) buf generate
	# Only this package defines -update; naming it keeps other packages'
	# test binaries from rejecting the flag.
	$(GO) test ./proto/opcontrol/wire/v1 -run '^TestGolden' -count=1 -update

drift: generate ## fail if regeneration changes or adds any file
	@git diff --exit-code --stat -- $(GENERATED_PATHS) || \
		{ echo "drift: generated files are stale; run make generate and commit" >&2; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- $(GENERATED_PATHS)); \
	if [[ -n "$$untracked" ]]; then \
		echo "drift: generation produced files git does not track:" >&2; echo "$$untracked" >&2; exit 1; \
	fi

lint: fmt-check vet golangci ## gofmt check, go vet, golangci-lint

fmt-check:
	@out=$$(gofmt -l .); if [[ -n "$$out" ]]; then echo "gofmt needed:" >&2; echo "$$out" >&2; exit 1; fi

vet:
	$(GO) vet $(PKGS)
	GOWORK=off $(GO) vet -C tools ./...

golangci:
	for m in $(MODULES) tools; do (cd $$m && $(GOLANGCI) run --config $(CURDIR)/.golangci.yml ./...) || exit 1; done

tidy-check: ## fail if any module's go.mod or go.sum is not tidy on its own (outside the workspace)
	for m in $(MODULES); do (cd $$m && GOWORK=off $(GO) mod tidy -diff) || { echo "tidy-check: run (cd $$m && GOWORK=off go mod tidy)" >&2; exit 1; }; done

test: ## the README's test command, over every module
	$(TEST_CMD)

test-cmd: ## print the README's test command (CI checks that the README shows it)
	@echo '$(TEST_CMD)'

test-short: ## the quick pass: every package with -short (under a minute)
	$(GO) test -short $(PKGS)

bench: ## benchmarks to $(BENCH_OUT); compare with BENCH_BASE=old.txt
	mkdir -p $(dir $(BENCH_OUT))
	$(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) $(PKGS) | tee $(BENCH_OUT)
	$(TOOL) -modfile=$(TOOLS_MOD) benchstat $(BENCH_BASE) $(BENCH_OUT)

vuln: ## govulncheck against an offline DB; fails only on reachable module vulns
	# The verdict comes from tools/vulnreport; test it before trusting it.
	GOWORK=off $(GO) test -C tools ./vulnreport
	MODULES="$(MODULES)" ./scripts/vuln.sh

fuzz: ## run every Fuzz* target for FUZZTIME (default 10s)
	FUZZTIME=$(FUZZTIME) PKGS="$(PKGS)" ./scripts/fuzz.sh

soak: ## the long runs: the robustness suite, then the durability suite (minutes; see RELIABILITY.md)
	./scripts/soak.sh

ci: ## everything CI runs, in CI's order
	./.ci/run
