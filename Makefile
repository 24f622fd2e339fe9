# One virtual environment in .venv; every target uses it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: setup test demo goldens bench clean

setup: $(BIN)/tracegen
$(BIN)/tracegen: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

test: setup
	$(BIN)/pytest

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
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache *.egg-info
