# Loom's build. `make run` trains the default job; `make test` runs the suite.
GO      ?= go
BIN     := bin/loom
CORPUS  := out/gosrc.bin
JOB     ?= examples/default.yaml

.PHONY: all build run test test-short bench bench-monitoring bench-tls bf16-parity chaos pp-bench proto lint setup fixtures clean web grafana \
	static image test-image test-multihost k8s

all: build

build:
	$(GO) build -o $(BIN) ./cmd/loom

setup:
	scripts/setup.sh test

$(CORPUS): | build
	@mkdir -p out
	$(BIN) prep --go-src --out $(CORPUS)

# The default job's data: the Go standard library's sources blended with
# English prose (the reStructuredText sources of Python's documentation, from
# Debian's python3.11-doc), encoded with a 4,096-token byte-level BPE trained
# on both (docs/tokenizers.md). It learns visibly better than bytes in the
# same time (held-out bits per byte, issue 18).
PYDOC     := /usr/share/doc/python3.11/html/_sources
TOKENIZER := out/tok-4k.json
$(PYDOC):
	scripts/setup.sh run
$(TOKENIZER): | build $(PYDOC)
	@mkdir -p out
	$(BIN) tokenizer train --go-src $(PYDOC) --include '*.txt' --vocab-size 4096 --out $@
out/gosrc-bpe.bin: $(TOKENIZER)
	$(BIN) prep --go-src --tokenizer $(TOKENIZER) --out $@
out/pydoc-bpe.bin: $(TOKENIZER)
	$(BIN) prep $(PYDOC) --include '*.txt' --tokenizer $(TOKENIZER) --out $@

# Train the default job.
run: build out/gosrc-bpe.bin out/pydoc-bpe.bin
	$(BIN) run $(JOB)

# The whole suite: lint, every package's tests under the race detector, and
# the kernels and the data plane's reductions again on their pure-Go path (the
# fallback for CPUs without AVX2).
test: setup lint
	$(GO) test -race -timeout 20m ./...
	$(GO) test -tags purego ./tensor/...
	$(GO) test -tags purego -run 'Reduce|Kernels' ./parallel/

test-short: lint
	$(GO) test -short ./...

bench: build
	scripts/bench.sh

# The cost of monitoring: tokens/s of $(JOB) with the dashboard open and
# Prometheus scraping every second vs neither, alternating rounds.
bench-monitoring: build $(CORPUS)
	scripts/bench-monitoring.sh $(JOB)

# The cost of mutual TLS: tokens/s of $(JOB) on a coordinator and two
# workers over tcp, plaintext vs mutual TLS, alternating rounds.
bench-tls: build out/gosrc-bpe.bin out/pydoc-bpe.bin
	scripts/bench-tls.sh $(JOB)

# bf16 against fp32: the same weights give the same loss and gradients to
# rounding, and `tiny` trained 200 steps in each precision, step by step
# (10-step means within 1%, single steps within 3%; ~3 min).
bf16-parity:
	LOOM_BF16_PARITY=1 $(GO) test -count=1 -run 'TestBF16GradientsMatchFP32|TestBF16TracksFP32' -v ./cmd/loom

# Kill -9 random workers of a dp 4 job (tiny model, 300 steps) five times,
# two of them during saves, replacements after random delays: the job must
# succeed, lose ≤ a checkpoint interval per kill, leave no process or port,
# and end with the model a run resumed by hand produces; prints the recovery
# times (detection, rendezvous, setup and load, first step). CHAOS_FLAGS:
# e.g. -chaos.seed N -chaos.steps 400 -chaos.kills 8; LOOM_CHAOS_REPORT=FILE
# also writes the report there.
chaos:
	$(GO) test -count=1 -timeout 30m -run '^TestChaos$$' -v ./cmd/loom -chaos $(CHAOS_FLAGS)

# Pipelined small (pp 2, 8 micro-batches, each schedule, 2 workers × 1 thread)
# beside one worker × 1 thread: tokens/s, the measured bubble against the
# simulator's, peak RSS per stage against the plan (~2 min a round;
# LOOM_PP_ROUNDS=N for more).
pp-bench:
	LOOM_PP_TEST=1 $(GO) test -count=1 -timeout 60m -run 'TestPipelineSmall$$' -v ./train

proto:
	proto/gen.sh

# The dashboard page: install the pinned npm packages and rebuild web/dist
# (committed, embedded in the binary; web's test checks it is current).
web:
	cd web && npm ci --no-audit --no-fund && npm run build

# The Grafana dashboard, scrape config and rules under deploy/ (committed;
# deploy/grafana's test checks they are current).
grafana:
	$(GO) run ./deploy/grafana/gen

# Deployment (docs/deploy.md). The static binary the image and the
# multi-host test use; VERSION is the source's unless given.
VERSION  ?= $(shell sed -n 's/^var Version = "\(.*\)"/\1/p' internal/version/version.go)
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null)
STATIC   := out/image/loom
static:
	@mkdir -p out/image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X github.com/loomtrain/loom/internal/version.Version=$(VERSION)" -o $(STATIC) ./cmd/loom

# The OCI image, built in Go (deploy/image; no container engine): an OCI
# layout in out/image/oci and a `podman load`/`docker load` tarball.
image: static
	$(GO) run ./deploy/image/build -binary $(STATIC) -version $(VERSION) -revision "$(REVISION)" \
		-layout out/image/oci -tarball out/image/loom.tar

# The image run in podman (skipped, with the reason, where podman cannot run
# containers).
test-image: image
	scripts/setup.sh deploy
	LOOM_IMAGE_TAR=$(CURDIR)/out/image/loom.tar LOOM_IMAGE_VERSION=$(VERSION) \
		$(GO) test -count=1 -v -run TestPodmanRunsImage ./deploy/image

# Three hosts in network namespaces, mutual TLS, a link cut and a degraded
# link (deploy/multihost; needs root).
test-multihost: static
	scripts/setup.sh deploy
	LOOM_MULTIHOST_BINARY=$(CURDIR)/$(STATIC) $(GO) test -count=1 -v -timeout 5m ./deploy/multihost

# The Kubernetes monitoring component's copies of deploy/grafana's
# dashboard and rules (committed; deploy/k8s's test checks they are current).
k8s:
	$(GO) run ./deploy/k8s/gen

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Regenerate the PyTorch golden fixtures (needs Debian's python3-torch).
fixtures:
	/usr/bin/python3 scripts/golden/make_fixtures.py

clean:
	rm -rf bin out
