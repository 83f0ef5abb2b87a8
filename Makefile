# Two commands set everything up: `make demo` and `make test`.
# torch==2.13.0 goes in first (a CPU wheel on this machine); a bare `torch` would pull a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= models,plot,dev,serve,llamacpp,onnx,executorch
comma  := ,
STAMP  := $(VENV)/.edgellm-installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(VENV)/bin/edgellm eval smollm2-135m
	$(VENV)/bin/edgellm bench smollm2-135m

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
