# The two commands of the README. Each creates .venv and installs into it when missing.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
OUT    ?= audit-out

.PHONY: demo test test-fast install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,formats]'
	@touch $(STAMP)

## make demo: the whole battery on the bundled gym model; writes $(OUT)/report.html
demo: $(STAMP)
	$(VENV)/bin/audit demo --out $(OUT)

## make test: the test suite
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

## make test-fast: the fast tier (tests not marked slow), about two minutes
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

clean-venv:
	rm -rf $(VENV)
