# Two commands do everything: `make run` (the main job) and `make test` (the test suite).
# Each creates the virtual environment and installs what it needs on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch (the CPU build here, from a local wheel); GPU users: make TORCH="torch" (or any
# CUDA wheel spec). TORCH_INDEX: a wheel index for it, e.g. https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH)' | tr -c 'a-zA-Z0-9.\n' _)

.PHONY: run test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

# `make run` trains to a time budget (BUDGET=5m by default: the same promise on any machine);
# `make run RECIPE=fast` trains a named recipe instead (the same epochs on every machine).
BUDGET ?= 5m
RECIPE ?=
RUN ?= runs/$(if $(RECIPE),$(RECIPE),budget-$(BUDGET))

# The main job: get CIFAR-10 (download, or $$CIFARLAB_DATA), train for $(BUDGET) (cifarlab
# measures this machine and picks the network and its length), evaluate it on the test split
# and write the report.
run: $(STAMP)
	$(VENV)/bin/cifarlab data show --download --out runs/samples.png
	@if [ -f $(RUN)/last.pt ]; then \
	  echo "$(RUN) exists: finishing it if it was interrupted (make run RUN=runs/other for a new run)"; \
	  $(VENV)/bin/cifarlab train --resume $(RUN); \
	elif [ -n "$(RECIPE)" ]; then \
	  $(VENV)/bin/cifarlab train --recipe $(RECIPE) --out $(RUN); \
	else \
	  $(VENV)/bin/cifarlab train --budget $(BUDGET) --out $(RUN); \
	fi
	$(VENV)/bin/cifarlab evaluate $(RUN)
	@echo "open $(RUN)/report.html in a browser"

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
