# onramp's one task runner. `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast lint bench clean

install: $(VENV)/.onramp-installed

$(VENV)/.onramp-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@# optimum-intel declares torchvision; PyPI's torchvision next to the CPU torch breaks
	@# transformers (operator torchvision::nms does not exist). onramp needs none of it.
	$(PY) -m pip uninstall -q -y torchvision || true
	touch $@

demo: install
	$(VENV)/bin/onramp demo

test: install
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check onramp builders serving registry evals flows tests

clean:
	rm -rf $(VENV) .cache build *.egg-info
