# Every target installs what it needs into .venv first, so a fresh clone needs only python3.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install test test-matrix demo demo-sweep bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test,demo]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q tests

demo: $(STAMP)
	$(OFFLINE) $(PY) recipes/run_mlm_cram.py recipes/configs/demo_minilm_austen.yaml

bench: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/bench_step.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
