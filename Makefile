# Two commands do all set-up on a fresh machine:
#   make book   create .venv, install the pinned tool chain and gni_lib, vendor
#               MathJax, execute every chapter and render HTML into _build/html
#   make test   the same set-up and build, then the whole test suite
# Other targets:
#   make book-student   the same book with every solution removed, into _build/student
#   make pdf            one PDF per chapter, printed by headless chromium, into _build/pdf
#   make bench          ratio benchmarks (benchmarks/RESULTS.md)
#   make robustness     every chapter under five random streams: failing cells and verdicts
#                       per stream (benchmarks/ROBUSTNESS.md); not part of make test
#   make results        the chapters in RESULTS_CHAPTERS at a larger preset (paper on a GPU,
#                       large on a CPU), every claim's result and the run's provenance into
#                       book/results/paper.json (committed); not part of make test
# GNI_SEED selects the random stream of every chapter (default 0). make test builds
# the book at stream 0 and runs the chapters again under nbval at NBVAL_SEED, so
# that every test run checks two streams.
#   make clean

PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
PY        := $(BIN)/python
INSTALLED := $(VENV)/.installed
MATHJAX_VERSION := 3.2.2
MATHJAX   := book/_vendor/mathjax
JB_FLAGS  := -W -n --keep-going
PYTEST_FLAGS ?= --durations=10
BOOK_SEED ?= 0
NBVAL_SEED ?= 1
ROBUSTNESS_STREAMS ?= 0 1 2 3 4
# The chapters with a claim whose quick verdict is not "holds" (benchmarks/ROBUSTNESS.md), and 09,
# whose Fig. 5 check a review judged too small at the quick preset.
RESULTS_CHAPTERS ?= 02 05 06 07 09 10 13 16 17

STUDENT   := _build/student
PDF       := _build/pdf

.PHONY: setup book book-student pdf test bench robustness results clean

setup: $(INSTALLED) $(MATHJAX)/tex-mml-chtml.js

# The venv is made once; the pinned set and gni_lib (editable) are reinstalled
# only when requirements.txt or pyproject.toml change.
$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# MathJax 3.2.2 from the npm registry, served from the book's own folder so that
# every page renders its math offline (see _config.yml: html_extra_path).
$(MATHJAX)/tex-mml-chtml.js:
	@rm -rf $(MATHJAX) $(MATHJAX).tmp && mkdir -p $(MATHJAX).tmp
	cd $(MATHJAX).tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	tar -xzf $(MATHJAX).tmp/mathjax-$(MATHJAX_VERSION).tgz -C $(MATHJAX).tmp
	mv $(MATHJAX).tmp/package/es5 $(MATHJAX) && rm -rf $(MATHJAX).tmp
	@test -f $@

# Execution results are cached per chapter; book/_ext/gni_build.py throws the
# cache away whenever gni_lib/, requirements.txt or pyproject.toml change.
book: setup
	GNI_SEED=$${GNI_SEED:-$(BOOK_SEED)} $(BIN)/jupyter-book build . $(JB_FLAGS)

# The student edition shares the execution cache, so it re-executes nothing.
book-student: book
	GNI_SEED=$${GNI_SEED:-$(BOOK_SEED)} GNI_EDITION=student $(BIN)/jupyter-book build . --path-output $(STUDENT) $(JB_FLAGS)

pdf: book
	$(PY) book/_ext/gni_print.py --html _build/html --out $(PDF)

# The library and book tests run with the random stream unset (unit tests keep their
# fixed seeds); the chapters then run under nbval at another stream than the build's.
test: book book-student pdf
	env -u GNI_SEED $(PY) -m pytest tests $(PYTEST_FLAGS)
	GNI_SEED=$(NBVAL_SEED) $(PY) -m pytest book --nbval-lax --nbval-current-env $(PYTEST_FLAGS)

bench: setup
	$(PY) benchmarks/run.py

robustness: setup
	$(PY) benchmarks/robustness.py --streams $(ROBUSTNESS_STREAMS)

results: setup
	$(PY) benchmarks/results.py --chapters $(RESULTS_CHAPTERS)

clean:
	rm -rf _build
