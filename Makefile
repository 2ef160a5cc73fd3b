# Two entry points for a fresh machine that has only Python 3.11:
#   make demo  — create/refresh .venv, install, run the end-to-end demo
#   make test  — create/refresh .venv, install with dev extras, run the full pytest suite
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test venv lint clean bench

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip

# Reinstall when the project metadata changes.
$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mclstexp demo --out demo_out

test: $(STAMP)
	$(VPY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check mclstexp_hub tests conversion benchmarks

clean:
	rm -rf $(VENV) demo_out .pytest_cache
