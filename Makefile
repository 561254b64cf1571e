# Two commands do everything on a fresh machine: `make test` and `make book`.
# Both create .venv when it is missing and install every pinned dependency into it
# (constraints.txt holds torch at 2.13.0, so pip never reaches for CUDA wheels).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: venv test unit chapters nbval book book-smoke browser-check bench lint lock clean distclean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt pip setuptools wheel
	$(PY) -m pip install --quiet --no-build-isolation -c constraints.txt -e '.[book,test]'
	@touch $(STAMP)

## make test: lint, unit tests, every chapter in the smoke profile (papermill), then nbval.
test: $(STAMP)
	$(MAKE) lint unit chapters nbval

lint: $(STAMP)
	$(PY) -m ruff check lidvae_nb tests .ci book/_ext
	$(PY) -m ruff format --check lidvae_nb tests .ci book/_ext

unit: $(STAMP)
	$(PY) -m pytest -n 2 tests

chapters: $(STAMP)
	$(PY) .ci/book.py execute --profile smoke --out _build/smoke

nbval: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadscope --nbval-lax --nbval-current-env -p no:cacheprovider _build/smoke/book

## make book: every chapter executed in its default (book) profile, HTML in _build/html.
book: $(STAMP)
	$(PY) .ci/book.py build

## make book-smoke: render the smoke-executed chapters (run `make chapters` first), for CI.
book-smoke: $(STAMP)
	$(PY) .ci/book.py build --executed _build/smoke --out _build/smoke-book

## make browser-check: open every page of the last build (_build/html, or HTML=...) in headless
## Chromium (installed with apt where missing); fails on errors, missing images, raw math, dead links.
HTML ?= _build/html
browser-check: $(STAMP)
	$(PY) .ci/browser_check.py --html $(HTML) --shots _build/screenshots

## make bench: step time of a VAE and of LIDVAE (autograd vs closed-form Brenier maps), and ratios.
bench: $(STAMP)
	$(PY) -m lidvae_nb.bench

## make lock: re-resolve every dependency in a scratch venv and rewrite constraints.txt.
lock:
	rm -rf _build/lockenv && $(PYTHON) -m venv _build/lockenv
	_build/lockenv/bin/pip install --quiet --upgrade pip setuptools wheel
	_build/lockenv/bin/pip install --quiet -e '.[book,test]' torch==2.13.0
	{ sed -n '1,3p' constraints.txt; _build/lockenv/bin/pip freeze --all --exclude-editable \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' | sort -f; } > constraints.new
	mv constraints.new constraints.txt && rm -rf _build/lockenv

clean:
	rm -rf _build .pytest_cache

distclean: clean
	rm -rf $(VENV)
