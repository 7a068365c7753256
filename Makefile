# georepl — build, demo, tests, benchmarks.
#
#   make demo    three-node cluster on loopback, no configuration needed
#   make install the binary, its manual page, the systemd units, the admin guide,
#                the example configurations and the Grafana dashboard (PREFIX, DESTDIR)
#   make test    everything CI runs (installs the Debian packages it needs), the
#                plugins' conformance suite and the cluster test on a plugin included
#   make lint    gofmt, go vet, go.mod tidy, staticcheck and the repository's rules
#   make plugins the example transport plugins, into bin/plugins/
#   make bench   georepl against nbdkit through fio's nbd engine, then bench-plugins,
#                and as root bench-resync and bench-wan
#   make bench-plugins  the built-in quic, tcp with TLS and the transport plugins
#                against the built-in tcp (ratios)
#   make bench-resync  resync throughput over a 200 Mbit/s tc tbf link between namespaces
#   make bench-tls  protocol C over tcp with TLS against plaintext, paired runs (ratios)
#   make bench-wan  protocol A over a 100 Mbit/s tc tbf link between namespaces:
#                tcp and quic, with and without LZ4 (ratios)
#   make failover-netns  automatic failover with real daemons in network namespaces
#                (part of make test)
#   make fuzz    every fuzz target for FUZZTIME (10s) each
#   make soak    the crash-consistency checker for as long as asked (SOAK=1h),
#                or the simulator (SIM=1h)
#   make vmtest  the VM rig: ext4 on /dev/nbd0, power loss, failover (by hand and
#                automatic, with a witness VM), WAN latency,
#                held I/O across a lost quorum, the rdma plugin over Soft-RoCE
#   make vmbench georepl against the in-kernel DRBD 8.4 in the VM rig's two VMs
#                (nbd and ublk, protocols A and C, bare link and netem delay)

GO      ?= go
BIN     := bin/georepl
# command:package pairs for the real NBD clients the tests and benchmarks use.
TOOLS   := fio:fio nbdkit:nbdkit nbdinfo:libnbd-bin nbdcopy:libnbd-bin qemu-img:qemu-utils ip:iproute2 tc:iproute2
# header:package pairs the RDMA transport plugin (cgo) builds against.
RDMA_DEV := /usr/include/infiniband/verbs.h:libibverbs-dev /usr/include/rdma/rdma_cma.h:librdmacm-dev
TESTFLAGS ?=

.PHONY: all build install plugins rdma-deps demo test failover-netns lint vet tidy-check staticcheck fmt-check unit unit-cluster unit-rest sim deps bench bench-plugins bench-resync bench-tls bench-wan soak fuzz fuzz-ci vmtest vmbench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/georepl

# The transport plugins, with the sha256 a plugin block needs. (make test
# builds them itself, in the tests that use them.) rdma uses cgo against
# libibverbs and librdmacm, whose headers rdma-deps installs.
PLUGINS := tcp-dscp tcp-fd shmring-example rdma
plugins: rdma-deps
	@mkdir -p bin/plugins
	@for p in $(PLUGINS); do \
		$(GO) build -o bin/plugins/$$p ./plugins/$$p || exit 1; \
	done
	@cd bin/plugins && sha256sum $(PLUGINS)

demo: build
	./$(BIN) demo

# install: PREFIX=/usr/local by default, DESTDIR for staging a package. The
# units name the binary where this PREFIX puts it; systemd reads units from
# PREFIX/lib/systemd/system for /usr and /usr/local (UNITDIR=/etc/systemd/system
# otherwise). The command reference
# is `georepl --help` and `georepl VERB --help`, and georepl(8), which
# `georepl man` generates from the same texts; the manual is the admin
# guide. Nothing under /etc is written: the configuration is yours.
PREFIX  ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
UNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR  ?= $(PREFIX)/share/doc/georepl
MANDIR  ?= $(PREFIX)/share/man
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/georepl
	./$(BIN) man > $(BIN).8 && install -D -m 0644 $(BIN).8 $(DESTDIR)$(MANDIR)/man8/georepl.8 && rm -f $(BIN).8
	@for u in georepl.service georepl@.service; do \
		sed -e 's|/usr/local/sbin/georepl|$(SBINDIR)/georepl|g' \
			configs/systemd/$$u > $(BIN).$$u || exit 1; \
		install -D -m 0644 $(BIN).$$u $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
		rm -f $(BIN).$$u; \
	done
	install -D -m 0644 -t $(DESTDIR)$(DOCDIR) README.md docs/*.md
	install -D -m 0644 -t $(DESTDIR)$(DOCDIR)/grafana docs/grafana/georepl.json
	install -D -m 0644 -t $(DESTDIR)$(DOCDIR)/examples configs/examples/*.hcl
	./$(BIN) --help > $(BIN).help && install -D -m 0644 $(BIN).help $(DESTDIR)$(DOCDIR)/georepl.help.txt && rm -f $(BIN).help
	@echo "installed under $(DESTDIR)$(PREFIX); then: systemctl daemon-reload && systemctl enable --now georepl georepl@RESOURCE"

# deps installs the Debian packages of real NBD clients (fio, nbdinfo,
# nbdcopy, qemu-img) and nbdkit, the benchmark baseline, if any is missing.
deps: rdma-deps
	@missing=""; for t in $(TOOLS); do \
		command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# rdma-deps installs the headers the rdma plugin builds against (go vet
# and go test build it too).
rdma-deps:
	@missing=""; for h in $(RDMA_DEV); do \
		[ -e $${h%%:*} ] || missing="$$missing $${h#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# vet and staticcheck run twice: with the default build tags and with the
# tags of the engine's self-checks and of the VM rig, so that no file goes
# unchecked.
LINTTAGS := invariants,vmtest

vet:
	$(GO) vet ./...
	$(GO) vet -tags $(LINTTAGS) ./...

# go.mod says what georepl imports: no requirement missing, none left over,
# none marked indirect that a package imports.
tidy-check:
	$(GO) mod tidy -diff
	cd cmd/georepl/internal/tools && $(GO) mod tidy -diff

# staticcheck is pinned in cmd/georepl/internal/tools/go.mod, a module of its own: as a tool of
# the main module its requirements would raise the versions of libraries
# georepl is built with (golang.org/x/net, x/crypto). `go tool` builds it
# from the module cache, so after the first download it runs offline.
STATICCHECK := $(GO) tool -modfile=cmd/georepl/internal/tools/go.mod staticcheck
staticcheck:
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags $(LINTTAGS) ./...

# lint: every static check, then the repository's own rules (repo_test.go
# at the root; the package dependency rule is cmd/georepl's
# TestDependencyRule, which unit runs).
lint: fmt-check vet tidy-check staticcheck
	$(GO) test -count=1 .

# The invariants tag turns on the engine's expensive self-checks.
# -count=1: never a cached pass. The cluster tests run real processes and
# clients (fio, qemu-io) whose behaviour the cache cannot see, and a flaky
# test must be able to show itself on every run. The timeout guards against
# a hang: cmd/georepl's process-level cluster tests take about 15 minutes
# under the race detector on two cores.
#
# cmd/georepl's tests are unit's long pole, and they wait on their daemons
# more than they use the two cores (four of them, run alone, used 0.55 of
# a core over their 107 s): they run three at a time, beside the other
# packages (unit-rest), each part's output printed in one piece when it
# ends (-Otarget; the -timeout bounds the wait).
CLUSTER_PKG := github.com/georepl/georepl/cmd/georepl
UNIT := $(GO) test -count=1 -race -tags invariants -timeout 30m $(TESTFLAGS)
unit:
	@$(MAKE) --no-print-directory -j2 -Otarget unit-cluster unit-rest
unit-cluster:
	$(UNIT) -parallel 3 $(CLUSTER_PKG)
unit-rest:
	$(UNIT) $$($(GO) list ./... | grep -vx '$(CLUSTER_PKG)')

# In CI (CI=true) the tests also fuzz every target briefly (see fuzz) and
# boot the VM rig for the scenarios VMTEST_CI names: the ext4 failovers on
# nbd and ublk, and on nbd with its connection on rdma, the automatic ext4
# failover on nbd with a witness VM (about as long as the nbd failover in
# the same run: three smaller VMs, a 64 MiB disk, no rejoin), protocol A vs C
# over WAN and the daemon restart, the logical block size, and
# TestRDMAShort: the rdma plugin's conformance suite over Soft-RoCE, then
# a protocol C resource on rdma whose plugin is SIGKILLed mid-write, data
# verified, on one boot of the two guests (2 to 4 minutes on the shared
# 2-core host at load averages of 12 to 20). TestExt4FailoverRDMA took 2.5
# minutes at a load average of 7 to 11 (its resource resyncs by checksum:
# see the test). `make vmtest` runs the rest too: the long in-guest kmod/ublk
# suite, the three-minute quorum hold (TestQuorumHold) and TestRDMA
# (TestRDMAShort's steps with rdma measured against tcp: 5 minutes): with
# them CI would pass its 25 minutes. Each name is anchored, by \b (make
# would expand a $): -test.run matches substrings, and TestExt4Failover
# alone ran TestExt4FailoverRDMA too.
VMTEST_CI := -test.run '^TestExt4Failover\b|^TestExt4AutoFailover\b|^TestExt4FailoverRDMA\b|^TestWANLatency\b|^TestUblk\b/^ext4|^TestLogicalBlockSize\b|^TestRDMAShort\b'

# The simulator (cmd/georepl/internal/sim): whole nodes in one process
# under random schedules of failures, without the race detector (unit
# runs fifty under it, with the engine's invariants). A failure prints
# the seed and the command that replays it.
SIM_SCHEDULES ?= 2000
sim:
	$(GO) test -run 'TestSim' -timeout 30m ./cmd/georepl/internal/sim -sim.schedules=$(SIM_SCHEDULES)

# sim, failover-netns and in CI the fuzz targets follow unit-rest beside
# unit-cluster (see unit).
test: deps lint plugins
	@$(MAKE) --no-print-directory -j2 -Otarget unit-cluster unit-rest sim failover-netns $(if $(CI),fuzz-ci)
	@if [ -n "$$CI" ]; then $(MAKE) --no-print-directory vmtest VMTESTFLAGS="$(VMTEST_CI)"; fi

# TestFailoverNetns: automatic failover with real daemons in network
# namespaces (root), five kinds of failure, about three minutes. make
# test runs it on its own, not inside cmd/georepl's tests (unit-cluster,
# the longest part).
failover-netns:
	$(GO) test -count=1 -race -tags invariants -timeout 30m -run '^TestFailoverNetns$$' -v ./cmd/georepl -failover.netns

fuzz-ci:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(CI_FUZZTIME)

# Every fuzz target of the repository (every func Fuzz... in a _test.go
# file, found anew on each run) for FUZZTIME each; FUZZTIME=10m for a
# longer hunt. Go minimises each new interesting input for up to a minute
# by default: in a short run the workers did little else (core/meta's
# FuzzOpen ran 413 inputs in 10 s), so FUZZMINIMIZETIME bounds it, as a
# number of runs: a bound in time (100ms, 20ms) left configs' FuzzParse,
# which finds new inputs often, at 70 to 3,000 inputs a second. A
# crasher is written to the package's testdata/fuzz, where go test
# replays it from then on. CI (CI=true make test) fuzzes each target for
# CI_FUZZTIME.
FUZZTIME ?= 10s
FUZZMINIMIZETIME ?= 100x
CI_FUZZTIME ?= 5s
fuzz:
	@targets=$$(grep -rE --include='*_test.go' --exclude-dir=testdata --exclude-dir=.cache -o '^func Fuzz[A-Za-z0-9_]*\(' . | \
		sed -E 's|^(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*)\($$|\1:\2|' | sort); \
	test -n "$$targets" || { echo "no fuzz targets found"; exit 1; }; \
	for spec in $$targets; do \
		pkg=$${spec%%:*}; fn=$${spec#*:}; \
		echo "== $$pkg $$fn"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg || exit 1; \
	done

# BENCHFLAGS="-only QD1" (or a set-up's name) measures a part only.
BENCHFLAGS ?=
bench: deps build plugins
	$(GO) run ./cmd/georepl/internal/benchrig -georepl $(BIN) $(BENCHFLAGS)
	$(MAKE) --no-print-directory bench-plugins
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory bench-resync bench-wan; \
	else echo "bench-resync and bench-wan skipped: they need root (network namespaces, tc)"; fi

# The built-in quic, tcp with TLS and the transport plugins against the
# built-in tcp, one connection over loopback: 1 MiB writes on the data
# channel and a 4 KiB control ping-pong, medians of BENCHCOUNT runs, each
# as a ratio to the built-in tcp.
BENCHCOUNT ?= 5
bench-plugins:
	$(GO) test -run '^$$' -bench BenchmarkTransports -count $(BENCHCOUNT) ./plugins/host | awk -f plugins/host/testdata/ratios.awk

# Resync throughput over a veth pair between two network namespaces shaped
# by tc tbf to 200 Mbit/s, with and without csums, and the application's
# write rate during a resync. Needs root and iproute2.
bench-resync: deps build
	$(GO) run ./cmd/georepl/internal/benchrig -georepl $(BIN) -resync $(BENCHFLAGS)

# Protocol C with one peer over tcp, with TLS against plaintext: fio's
# 1 MiB QD8 writes and 4 KiB QD1 latency, each run with TLS paired with a
# plaintext one, the median of their ratios (goals: >= 0.9x, <= 1.1x),
# with the CPU per MiB and per write of fio and each daemon, and the
# ceiling that AES-GCM's cost on this machine sets (docs/transports.md).
# BENCHFLAGS="-profile DIR" also writes each daemon's CPU profiles.
bench-tls: deps build
	$(GO) run ./cmd/georepl/internal/benchrig -georepl $(BIN) -tls -runs 5 $(BENCHFLAGS)

# Protocol A over a veth between two network namespaces shaped by tc tbf
# to 100 Mbit/s: the steady replication rate over tcp and quic, with and
# without LZ4, on compressible and random data. Needs root and iproute2.
# BENCHFLAGS="-netns-prefix NAME" names the namespaces and veths it makes
# (also for bench-resync).
bench-wan: deps build
	$(GO) run ./cmd/georepl/internal/benchrig -georepl $(BIN) -wan $(BENCHFLAGS)

# Kill the primary of a loopback cluster at random moments for SOAK, check
# every survivor, print the count of runs and failures. With SIM set, run
# the simulator's random schedules for SIM instead, reporting every
# failing seed and the count of each kind of violation.
SOAK ?= 10m
SIM ?=
soak: build
	@if [ -n "$(SIM)" ]; then \
		$(GO) test -tags invariants -run 'TestSim$$' -timeout 0 -v ./cmd/georepl/internal/sim -sim.duration=$(SIM) -sim.keepgoing; \
	else ./$(BIN) check soak --duration $(SOAK); fi

# The VM rig (kmod/vmtest) boots Debian's 6.12 kernel under QEMU, two VMs
# linked over UDP, and prints a pass/fail table. Run as root: the first run
# installs qemu-system-x86, busybox-static and e2fsprogs and downloads the
# kernel into .cache/vm. Consoles are logged in .cache/vm/logs.
# The test binary runs directly so that its summary table shows on success.
vmtest:
	@mkdir -p .cache/vm
	$(GO) test -tags vmtest -c -o .cache/vm/vmtest.test ./kmod/vmtest
	cd kmod/vmtest && ../../.cache/vm/vmtest.test -test.timeout 40m $(VMTESTFLAGS)

# georepl on /dev/nbdN and /dev/ublkbN against the real DRBD (drbd.ko
# 8.4 of the kernel package the rig boots, Debian's drbd-utils, which
# setup.sh installs) in the same two TCG VMs over the same link: QD1
# O_DSYNC latency, 1 MiB sequential and 4 KiB QD16 writes, medians of
# VMBENCH_RUNS rounds, on the bare link and with each netem delay of
# VMBENCH_RTT (ms), as ratios to the raw disk and to DRBD. Root, like
# vmtest. About 30 minutes on a loaded 2-core machine with the defaults.
VMBENCH_RUNS ?= 3
VMBENCH_RTT  ?= 0,20,80
VMBENCHFLAGS ?=
vmbench:
	@mkdir -p .cache/vm
	$(GO) test -tags vmtest -c -o .cache/vm/vmtest.test ./kmod/vmtest
	cd kmod/vmtest && ../../.cache/vm/vmtest.test -test.run '^TestVMBench$$' -test.timeout 3h \
		-vmbench -vmbench.runs $(VMBENCH_RUNS) -vmbench.rtt $(VMBENCH_RTT) $(VMBENCHFLAGS)

clean:
	rm -rf bin
