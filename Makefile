# Set-up and entry points. `make demo` and `make test` create .venv and install everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3

.PHONY: demo test test-random test-fast check bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch/torchvision first, pinned to the releases this machine serves (CPU here, CUDA on clusters)
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Label Studio, for the review loop's tests (a server of its own: it pins numpy < 2.3 and pyarrow < 25,
# so it does not go into .venv; ray_wsis talks to any Label Studio over HTTP)
LS_VENV ?= .venv-label-studio
$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install -q "label-studio==1.23.2"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ray-wsis demo

test: $(VENV)/.installed $(LS_VENV)/.installed
	$(PY) -m pytest -q -p no:randomly --durations=15

# the same suite in a random order (pytest-randomly; the seed is printed: --randomly-seed=N repeats it)
test-random: $(VENV)/.installed $(LS_VENV)/.installed
	$(PY) -m pytest -p randomly

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -p no:randomly -m "not slow"

check: $(VENV)/.installed
	$(VENV)/bin/ruff check ray_wsis tests bench
	$(VENV)/bin/ruff format --check ray_wsis tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed
	$(PY) bench/random_walk.py
	$(PY) bench/train_step.py
	$(PY) bench/stages.py
	$(PY) bench/scaling.py
	$(PY) bench/memory.py
	$(PY) bench/calibration.py --output demo_output
	$(PY) bench/scale.py
	$(PY) bench/model_files.py

clean:
	rm -rf $(VENV) demo_output demo_data
