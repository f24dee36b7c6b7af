# Two commands on a fresh machine: `make run` and `make test`; both set up .venv when missing.
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/sample.yaml
RUN_DIR ?= runs/sample

.PHONY: setup run run-sources run-web test test-fast lint format bench-setup bench clean slurm-up slurm-down

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_langid_model.py
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test,eval,trackers,cloud,ray]'
	$(PY) scripts/install_langid_model.py
	touch $@

run: setup
	$(PY) -m pipeline run --config $(CONFIG) --output $(RUN_DIR)

# The sample corpus split by origin into three named sources, mixed by weight in training.
run-sources: setup
	$(PY) scripts/split_sample_by_source.py
	$(PY) -m pipeline run --config configs/sources.yaml --output runs/sources

# The web sample (data/web_sample: WARC files of fictional sites) through the crawl front end.
run-web: setup
	$(PY) -m pipeline run --config configs/web.yaml --output runs/web

# Two pytest workers, each file's tests on one of them (its module fixtures built once): one test's
# process start-up, file I/O and Slurm waits overlap with the other's compute. Files go out in
# collection order, the longest first (tests/conftest.py), not by their number of tests.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup
	$(PY) -m pytest -q $(XDIST)

test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow"

# What the tests check of the code itself (tests/test_lint.py), and the formatter that fixes its layout.
CODE := pipeline data_prep training launch tests scripts bench
lint: setup
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format $(CODE)

bench-setup: setup
	$(VENV)/bin/pip install --quiet -e '.[bench]'

bench: bench-setup
	$(PY) bench/prep_bench.py
	$(PY) bench/pack_bench.py
	$(PY) bench/filters_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/mix_bench.py
	$(PY) bench/warc_bench.py

clean:
	rm -rf $(RUN_DIR)

# A one-node Slurm cluster on this machine (root; Debian's slurm-wlm and munge), for the Slurm tests.
slurm-up:
	scripts/slurm_local.sh install
	scripts/slurm_local.sh start

slurm-down:
	scripts/slurm_local.sh stop
