# Pulseboard: `make run` starts everything on a fresh machine; `make test` runs the whole suite (what CI runs),
# `make test-fast` the inner loop without slow tests, `make soak` the long waits.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-8)

.PHONY: run test test-fast test-clock lint bench static setup clean fuzz soak bench-soak lock

run: setup static  ## Install, migrate, start Daphne and the collectors, print the URL
	$(PY) manage.py serve

test: setup static  ## Run the suite on SQLite and on PostgreSQL (with Redis, Mosquitto, Chromium), all but the soak tests
	bash scripts/test.sh

test-fast: setup static  ## The inner loop: the suite without slow and soak tests, on SQLite, in under 2 minutes
	$(PY) -m pytest -m "not slow and not soak" -q -p no:cacheprovider

test-clock: setup  ## The clock-sensitive tests with the clock at midnight, year end and DST edges, both databases; not in CI
	bash scripts/test-clock.sh

lint: setup
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

bench: setup  ## Benchmarks against their baselines (InfluxDB, bare COPY, raw websockets); results in bench/README.md
	bash scripts/bench-deps.sh
	$(PY) bench/ingest.py && $(PY) bench/history.py && $(PY) bench/fanout.py

fuzz: setup  ## Hostile inputs, 100,000 per endpoint: JSON, line protocol, socket (docs/security.md); not in CI
	FUZZ_INPUTS=100000 FUZZ_HTTP_INPUTS=3000 FUZZ_SOCKET_INPUTS=1000 $(PY) -m pytest \
	  tests/test_ingest_fuzz.py tests/test_protocol_fuzz.py -k "hostile or bomb" -p no:cacheprovider -q -s --durations=10

soak: setup static  ## The soak tests (pytest -m soak: a subscription kept quiet for a minute), then bench-soak; not in CI
	$(PY) -m pytest -m soak -q -p no:cacheprovider
	$(MAKE) bench-soak

bench-soak: setup  ## 1,000 viewers and 4 agents for 10 minutes (bench/soak.py; bench/README.md, Soak); not in CI
	$(PY) bench/soak.py --sqlite

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	bash scripts/bootstrap.sh
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.txt
	$(PY) -m pip check
	rm -f $(VENV)/.installed-* && touch $(STAMP)

lock:  ## Compile requirements*.in into the pinned, hashed requirements*.txt (after editing an .in file)
	test -d .venv-tools || $(PYTHON) -m venv .venv-tools
	.venv-tools/bin/pip install --quiet pip-tools==7.7.0
	.venv-tools/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links -o requirements.txt requirements.in
	.venv-tools/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links -o requirements-dev.txt requirements-dev.in

static: node_modules/uplot/dist/uPlot.iife.min.js  ## Copy uPlot from npm into static/vendor (never committed)
	mkdir -p dashboard/static/vendor/uplot
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css dashboard/static/vendor/uplot/

node_modules/uplot/dist/uPlot.iife.min.js: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) node_modules dashboard/static/vendor
