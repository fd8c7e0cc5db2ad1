# Two commands for a fresh clone (both set up .venv on first use):
#   make book   execute every chapter, validate it, build the HTML book  (PROFILE=ci for a quick run)
#   make test   run the test suite (unit tests and the whole pipeline on the ci profile)
# The workflows in .github/workflows/ call these targets and nothing else of their own:
#   make dist   the release: sdist and wheel in dist/, checked by twine (TAG=vX.Y.Z must match)

PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= full
SEED    ?= 0
PY      := $(VENV)/bin/python

.PHONY: book test setup lock clean dist

setup: $(VENV)/.installed node_modules/.package-lock.json

# constraints.txt locks every package installed here, transitive ones included
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book,test,bench]"
	touch $@

# MathJax, served with the book so that its equations render offline (pinned in package-lock.json)
node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing: install Node.js and npm (Debian: apt-get install nodejs npm), then run make again" >&2; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund

# Rebuild the lock in a fresh environment, from the versions pinned now plus whatever a changed
# requirement needs; commit the new constraints.txt.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -c constraints.txt -e ".[book,test,bench]"
	# torch without its local label (+cpu): ==2.13.0 takes the CPU build here and PyPI's elsewhere
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v "^pip==" \
	  | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

book: setup
	$(PY) -m bookbuild all --profile $(PROFILE) --seed $(SEED)

test: setup
	$(PY) -m pytest

# The version lives in pyproject.toml alone; wmbook.__version__ reads it from the installed
# metadata. The release notes are the version's section of CHANGELOG.md.
dist: setup
	rm -rf dist
	$(PY) -m build --sdist --wheel --outdir dist .
	rm -rf build  # setuptools' scratch folder
	$(PY) -m twine check --strict dist/*
	@version=$$($(PY) -c 'import wmbook; print(wmbook.__version__)'); \
	if [ -n "$(TAG)" ] && [ "$(TAG)" != "v$$version" ]; then \
	  echo "tag $(TAG) does not match the package version $$version (pyproject.toml)" >&2; exit 1; fi; \
	mkdir -p _build; \
	awk -v v="$$version" '/^## /{on = index($$0, "## [" v "]") == 1; next} on' CHANGELOG.md > _build/release-notes.md; \
	if ! grep -q . _build/release-notes.md; then \
	  echo "CHANGELOG.md has no section '## [$$version]'" >&2; exit 1; fi; \
	echo "dist/ holds wmbook $$version; notes in _build/release-notes.md"

clean:
	rm -rf _build dist
