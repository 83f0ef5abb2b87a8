# Two commands set everything up: `make demo` and `make test`.
# torch==2.13.0 goes in first (a CPU wheel on this machine); a bare `torch` would pull a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= models,plot,dev,serve,llamacpp,onnx,executorch,litert,finetune,ray
comma  := ,
STAMP  := $(VENV)/.edgellm-installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup demo test test-fast bench clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# the main job on the bundled defaults: SmolLM2-135M for this host, within 15 minutes on 2 cores
demo: setup
	$(VENV)/bin/edgellm optimize --model smollm2-135m --device host --budget-minutes 15 --out out/demo --force

# the slow report test opens report.html in headless Chromium (Debian package `chromium`)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: setup chromium
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
