# vaekit: `make demo` trains on the embedded digits data and writes image grids; `make test` runs the tests.
# Both set up .venv first (PyTorch pinned to the 2.13.0 CPU build; see DEVELOPERS.md).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
VAEKIT := $(VENV)/bin/vaekit
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

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

clean:
	rm -rf $(VENV) runs .pytest_cache build src/*.egg-info
