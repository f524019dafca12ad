# Two commands set featureforge up on a fresh machine: `make demo` and `make test`.
# Stamp files inside .venv make a second run skip the installs already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGIN_DIRS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
PROJECT_FILES := pyproject.toml $(wildcard plugins/*/pyproject.toml)
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: demo test test-slow install clean

demo: $(VENV)/.installed
	$(BIN)/featureforge demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

# The slow suite includes the real-loader checks (SAELens/sparsify load our exports): their venvs
# go to .peers/ (git-ignored); if the install fails, those checks are skipped and -rs says why.
test-slow: $(VENV)/.installed-test
	bash benchmarks/install_peers.sh || echo "benchmarks/install_peers.sh failed: the real-loader checks will be skipped"
	$(BIN)/python -m pytest -q -rs -m slow

install: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	touch $@

$(VENV)/.installed: $(VENV)/.torch $(PROJECT_FILES)
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)" -e . $(foreach d,$(PLUGIN_DIRS),-e $(d))
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)" -e ".[test]" $(foreach d,$(PLUGIN_DIRS),-e "$(d)[test]")
	touch $@

clean:
	rm -rf $(VENV)
