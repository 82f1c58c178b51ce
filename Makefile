# vaekit: `make demo` trains on the embedded digits data and writes image grids; `make test` runs the tests;
# `make docs` builds the user guide (docs/) as a web site in site/.
# All set up .venv first (PyTorch pinned to the 2.13.0 CPU build; see DEVELOPERS.md).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
VAEKIT := $(VENV)/bin/vaekit
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test docs bench clean gpu-data

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	rm -rf runs/demo
	$(VAEKIT) train digits --out runs/demo --epochs 150 --batch-size 64 --lr 2e-3 --latent-dim 8 --no-progress
	$(VAEKIT) sample runs/demo -n 64 -o runs/demo/samples.png
	$(VAEKIT) reconstruct runs/demo digits:test -o runs/demo/reconstructions.png
	$(VAEKIT) info runs/demo
	@echo "Look at runs/demo/samples.png, runs/demo/reconstructions.png and runs/demo/loss_curve.png"

test: setup
	$(PY) -m pytest -q

# The dev extra already holds the docs tools (tests/test_docs.py builds the site); the check covers a .venv set up
# before they were added. The CLI reference page is regenerated from the parsers; --strict fails on broken links.
docs: setup
	@$(PY) -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || $(PY) -m pip install --quiet -e '.[docs]'
	$(PY) docs/gen_cli_reference.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
	@echo "Open site/index.html"

# Fashion-MNIST beside the working tree for benchmarks/gpu_check.py on a lent GPU machine, which may lack the
# Debian package: the device tool carries gpu-data/ (git-ignored, 30 MB).
gpu-data:
	mkdir -p gpu-data && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz gpu-data/

clean:
	rm -rf $(VENV) runs .pytest_cache build site src/*.egg-info
