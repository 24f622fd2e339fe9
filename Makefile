# One virtual environment in .venv; every target uses it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: setup browser bytecode test demo goldens bench validate calibrate docs fuzz clean

setup: $(BIN)/tracegen browser bytecode
$(BIN)/tracegen: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

# The package's modules compiled once, as a regular (non-editable) install does: every command then starts
# without compiling them (~0.1 s), also where PYTHONDONTWRITEBYTECODE keeps Python from caching them itself.
bytecode: $(BIN)/tracegen
	@$(BIN)/python -m compileall -q tracegen replay viz bench >/dev/null

# Debian's headless Chromium and its driver for the viz browser tests (skipped when absent).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (Debian packages) for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	    >/dev/null) || echo "note: could not install chromium: the browser tests will be skipped"; \
	else echo "note: no chromium (install Debian's chromium and chromium-driver): browser tests skipped"; fi

# The suite on up to TEST_WORKERS processes (pytest-xdist; 2 on CI's 2 cores), a test file's tests on one process in
# their order (--dist loadfile: README examples build on the files earlier ones wrote); TEST_WORKERS=0 runs it in
# this process (one test: `.venv/bin/pytest tests/test_x.py::name`, serial by default).
TEST_WORKERS ?= auto
test: setup
	$(BIN)/pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile

demo: setup
	@mkdir -p $(OUT)
	$(BIN)/tracegen estimate
	$(BIN)/tracegen trace -o $(OUT)/prefill.json.gz
	$(BIN)/replay analyze $(OUT)/prefill.json.gz
	$(BIN)/viz html $(OUT)/prefill.json.gz -o $(OUT)/report.html
	@echo "open $(OUT)/report.html in a browser; $(OUT)/prefill.json.gz in ui.perfetto.dev"

goldens: setup
	$(BIN)/python -m tests.goldens

bench: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run

validate: setup
	$(BIN)/python -m bench.validate --readme
	$(BIN)/python -m bench.accuracy --write

calibrate: setup
	@mkdir -p $(OUT)
	$(BIN)/replay calibrate traces/observed/h100/sweep.json.gz --hardware h100-datasheet \
	  -o $(OUT)/h100-fit.json --holdout-m 3,24,96,384,1536,6144,48,768 --holdout-name shared_up,shared_down

# the fuzz campaign: 105,000 generated inputs against the loader, analyze and tracegen (tests/fuzz.py)
fuzz: setup
	$(BIN)/python -m tests.fuzz

# docs/trace-contract.md: the prose above the marker, the tables below it from tracegen/base/contract.py
docs: setup
	$(BIN)/python -m tests.contract_doc

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache *.egg-info
	find tracegen replay viz bench tests -name __pycache__ -prune -exec rm -rf {} +
