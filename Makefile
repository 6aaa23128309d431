# One command to set up and open the course, one to set up and test it.
#   make lab     set up .venv and open JupyterLab at the lessons
#   make test    set up .venv and run the whole test suite (what CI runs)
# Torch: the default pins torch 2.13.0. On Linux, PyPI's build of it targets CUDA (several GB);
# for the small CPU build use  make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# and for a given CUDA version the matching index (e.g. .../whl/cu126).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_WORKERS ?= 2
# Notebooks run single-threaded, as on a one-core Binder session, and reproduce their outputs.
export OMP_NUM_THREADS = 1
export MKL_NUM_THREADS = 1
export PYDEVD_DISABLE_FILE_VALIDATION = 1

NOTEBOOKS = $(wildcard solutions/*.ipynb lessons/*.ipynb)
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup lab test lint solutions release bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[dev,lab]"
	touch $@

# JupyterLab refuses to start as root (a container, a cloud VM) unless told --allow-root, which
# changes nothing for a normal user. Without a display no browser can start, and a console browser
# would take over the terminal: then the server only prints the URL to open (macOS and Windows,
# where DISPLAY is not set, always have one).
# Extra options go in LAB_ARGS, e.g. make lab LAB_ARGS="--ip=0.0.0.0 --port=8899".
LAB_ARGS ?=
HAS_DISPLAY := $(if $(DISPLAY)$(WAYLAND_DISPLAY)$(filter Darwin,$(shell uname -s))$(OS),yes)

lab: setup
	@$(if $(HAS_DISPLAY),,echo "No display here: open the http:// URL printed below in a browser (Ctrl+C stops JupyterLab).")
	$(VENV)/bin/jupyter lab --allow-root $(if $(HAS_DISPLAY),,--no-browser) $(LAB_ARGS) lessons/01_mdps.ipynb

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadscope tests $(NOTEBOOKS) $(NBVAL)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check course tests benchmarks

# Re-execute every solution notebook in place (stored outputs), then regenerate the lessons.
solutions: setup
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=600 solutions/*.ipynb
	$(VENV)/bin/course release

release: setup
	$(VENV)/bin/course release

bench: setup
	$(PY) benchmarks/bench_notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
