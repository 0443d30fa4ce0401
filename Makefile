# sipcluster — two commands for a newcomer: `make lab` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian packages the tests drive as real peers (command -> package)
DEB_TOOLS := sipp:sip-tester tshark:tshark sipsak:sipsak named:bind9 named-checkconf:bind9-utils \
             dig:bind9-dnsutils systemd-analyze:systemd nft:nftables baresip:baresip \
             linphonec:linphone-cli gcc:gcc pg_ctlcluster:postgresql chromium:chromium slapd:slapd \
             kamailio:kamailio
# ... and the reference proxy the benchmarks compare against
BENCH_TOOLS := kamailio:kamailio svwar:sipvicious nats-server:nats-server \
               valgrind:valgrind callgrind_control:valgrind perf:linux-perf \
               /usr/lib/*/kamailio/modules/presence.so:kamailio-presence-modules
APT_GET := $(shell [ "$$(id -u)" = 0 ] && echo apt-get || echo sudo apt-get)

.PHONY: all venv compile tools bench-tools apt-tools lint typecheck test test-fast bench lab clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	SIPCLUSTER_COMPILE=0 $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The SIP message model and transaction layer, the sip-proxy's core and the UDP
# transport's per-datagram path, compiled with mypyc (setup.py: the COMPILED_MODULES
# of protocols/sip, daemons/sip_proxy and daemons/runtime); rebuilt whenever one of
# their sources changes.
SIP_COMPILED := $(patsubst %,protocols/sip/%.py,uri headers message timers rules transaction splice)
PROXY_COMPILED := $(patsubst %,daemons/sip_proxy/%.py,registrar routing forwarding flows security \
                    registrar_front hop_by_hop proxy worker_core)
RUNTIME_COMPILED := $(patsubst %,daemons/runtime/%.py,tally driver datagrams)
COMPILE_STAMP := build/.sip-compiled

$(COMPILE_STAMP): $(STAMP) setup.py protocols/sip/__init__.py daemons/sip_proxy/__init__.py \
                  daemons/runtime/__init__.py $(SIP_COMPILED) $(PROXY_COMPILED) $(RUNTIME_COMPILED)
	@command -v cc >/dev/null 2>&1 || $(MAKE) --no-print-directory apt-tools PAIRS="gcc:gcc"
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c "import sys, protocols.sip as s; sys.exit(0 if s.COMPILED else 'compiled SIP modules not in use')"
	$(PY) -c "import sys, daemons.sip_proxy as p; sys.exit(0 if p.COMPILED else 'compiled sip-proxy modules not in use')"
	$(PY) -c "import sys, daemons.runtime as r; sys.exit(0 if r.COMPILED else 'compiled runtime modules not in use')"
	@mkdir -p build && touch $@

compile: $(COMPILE_STAMP)

tools:
	@$(MAKE) --no-print-directory apt-tools PAIRS="$(DEB_TOOLS)"

bench-tools:
	@$(MAKE) --no-print-directory apt-tools PAIRS="$(DEB_TOOLS) $(BENCH_TOOLS)"

apt-tools:
	@missing=""; for pair in $(PAIRS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || ls $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(APT_GET) update -q && $(APT_GET) install -y -q $$missing; \
	fi

lint: venv
	$(VENV)/bin/ruff check protocols daemons tests bench

typecheck: venv
	$(VENV)/bin/mypy protocols

# the suites side by side, one per core (tests/run_suites.py: which directories
# share nothing on the network), then a summary; the pure-Python SIP stack is one
test: venv compile tools lint typecheck
	$(PY) tests/run_suites.py

test-fast: venv compile
	$(VENV)/bin/pytest -q -x -m "not interop"

bench: venv compile bench-tools
	$(PY) bench/run_all.py

# scenario x peer x transport against the shipped lab -> docs/interop.md
interop: venv compile bench-tools
	$(PY) bench/interop_matrix.py

lab: venv compile
	$(VENV)/bin/sipcluster lab run

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .hypothesis
	rm -f *__mypyc*.so protocols/sip/*.so daemons/sip_proxy/*.so daemons/runtime/*.so
