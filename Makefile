# Two commands for a fresh clone (both set up .venv on first use):
#   make book   execute every chapter, validate it, build the HTML book  (PROFILE=ci for a quick run)
#   make test   run the test suite (unit tests and the whole pipeline on the ci profile)

PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= full
SEED    ?= 0
PY      := $(VENV)/bin/python

.PHONY: book test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book,test,bench]"
	touch $@

book: setup
	$(PY) -m wmbook all --profile $(PROFILE) --seed $(SEED)

test: setup
	$(PY) -m pytest

clean:
	rm -rf _build
