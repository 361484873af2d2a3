# The book: notebooks/*.md (MyST, paired by jupytext) --papermill--> book/chapters/*.ipynb
# (committed; what the book renders and nbval checks) --jupyter-book--> _build/html.
#
# Included by the main Makefile, which defines PY (the venv python), VENV_STAMP (the
# prerequisite that builds the venv) and TARGET_LANG (from `make ... LANG=th`; the
# locale variable LANG itself is reset for recipes). Targets defined here:
#   notebooks      execute every notebooks/*.md with papermill (into book/chapters/ for the
#                  book's models, else into _build/<model>/chapters/; see BOOK_MODEL below)
#   notebook-NAME  execute one notebook (notebooks/NAME.md)
#   book           jupyter-book build --all -W -n --keep-going (renders the committed copies;
#                  no network; --all so that warnings of unchanged pages count too); for a
#                  model that is not the book's, a copy of the book with that model's
#                  chapters, built into _build/<model>/_build/html
#   nbval          pytest --nbval on the executed notebooks
#   browser-check  build the book, then headless Chromium over every page of _build/html
#                  (installs Debian's chromium when missing and root; screenshots: _build/screenshots)
#   book-vendor    re-fetch the offline JavaScript (require.js, widget manager, MathJax) from npm
#   book-clean     remove _build

# Paths of the book's content are relative to the working directory (the repository
# root); the tools below are found relative to this file.
BOOK_MK_ROOT  := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
BOOK_SOURCES  := $(wildcard notebooks/*.md)
CHAPTERS_DIR  := book/chapters
SCREENSHOTS   := _build/screenshots
VENV_BIN      := $(dir $(PY))
# The kernel papermill and nbval start (`-k python3`) is the venv's own spec (setup
# installs it with `ipykernel install --sys-prefix`); JUPYTER_PATH puts it before any
# user-level python3 spec that would run another interpreter.
JUPYTER_DATA  := $(abspath $(VENV_BIN)..)/share/jupyter
NBVAL_SANITIZE := $(BOOK_MK_ROOT)/tests/nbval_sanitize.cfg

# Notebook parameters (each notebook's `parameters` cell declares them). Strings go
# with -r (raw), numbers with -p; RANK and SPARSITY only when given.
TARGET_LANG ?= th
MODEL  ?= organism
DEVICE ?= cpu
SEED   ?= 0
# The book's models: the committed book/chapters show BOOK_MODEL's results, except the
# chapters that name their own model (BOOK_MODEL_<chapter>, with the MODEL override below).
# RUN_MODEL is the MODEL this make was asked for (read before any per-chapter override).
# A chapter executes into book/chapters when RUN_MODEL is BOOK_MODEL (the default run
# rebuilds the whole book) or that chapter's own model; for any other model it goes to
# _build/<model slug>/chapters and `book` builds that model's site under _build/<slug>/,
# so a run on one's own model never touches the committed book.
BOOK_MODEL := organism
BOOK_MODEL_08_gemma := gemma-270m
BOOK_MODEL_09_real_model := qwen2.5-coder-0.5b
BOOK_MODEL_10_own_model := qwen2.5-coder-0.5b
BOOK_MODEL_11_where_it_stops := qwen2.5-coder-0.5b
RUN_MODEL := $(MODEL)
BOOK_RUN := $(filter $(RUN_MODEL),$(BOOK_MODEL) $(BOOK_MODEL_08_gemma) $(BOOK_MODEL_09_real_model) $(BOOK_MODEL_10_own_model) $(BOOK_MODEL_11_where_it_stops))
# results/<slug> naming (mlsafe.results.model_slug); expanded only in recipes, after the venv exists
RUN_SLUG = $(shell $(PY) -c 'import sys; from mlsafe.results import model_slug; print(model_slug(sys.argv[1]))' '$(RUN_MODEL)')
chapter_dir = $(if $(filter $(RUN_MODEL),$(BOOK_MODEL) $(BOOK_MODEL_$(1))),$(CHAPTERS_DIR),_build/$(RUN_SLUG)/chapters)
BOOK_STAGE = _build/$(RUN_SLUG)/src
BOOK_HTML = $(if $(BOOK_RUN),_build/html,_build/$(RUN_SLUG)/_build/html)

PAPERMILL_PARAMS = -r LANG $(TARGET_LANG) -r MODEL $(MODEL) -r DEVICE $(DEVICE) -p SEED $(SEED) \
	$(if $(RANK),-p RANK $(RANK)) $(if $(SPARSITY),-p SPARSITY $(SPARSITY))

# Recipes never see the target language as a locale; results are found from any cwd
# (notebooks read them through mlsafe.results, which honours MLSAFE_RESULTS).
MLSAFE_RESULTS ?= $(CURDIR)/results
BOOK_ENV = env LANG=C.UTF-8 LC_ALL=C.UTF-8 OMP_NUM_THREADS=1 MLSAFE_RESULTS=$(MLSAFE_RESULTS) \
	JUPYTER_PATH=$(JUPYTER_DATA) PYDEVD_DISABLE_FILE_VALIDATION=1

.PHONY: notebooks book nbval browser-check book-vendor book-clean

notebooks: $(patsubst notebooks/%.md,notebook-%,$(BOOK_SOURCES))

# Chapter 8 is about the Gemma backbone, whatever MODEL the other chapters show.
notebook-08_gemma: override MODEL = gemma-270m
# Chapter 9 is about the packaged Qwen instruct model and its one edit for all languages.
notebook-09_real_model: override MODEL = qwen2.5-coder-0.5b
notebook-09_real_model: override TARGET_LANG = all
# Chapter 10 runs the CLI on tiny models and shows the commands' committed Qwen numbers.
notebook-10_own_model: override MODEL = qwen2.5-coder-0.5b
notebook-10_own_model: override TARGET_LANG = ja
# Chapter 11 reads the packaged Qwen's ceiling, search and LANG=ja PRESET=best results.
notebook-11_where_it_stops: override MODEL = qwen2.5-coder-0.5b
notebook-11_where_it_stops: override TARGET_LANG = ja

notebook-%: notebooks/%.md $(VENV_STAMP)
	@mkdir -p $(call chapter_dir,$*) _build/notebooks
	$(BOOK_ENV) $(VENV_BIN)jupytext --to ipynb --output _build/notebooks/$*.ipynb $<
	$(BOOK_ENV) $(VENV_BIN)papermill _build/notebooks/$*.ipynb $(call chapter_dir,$*)/$*.ipynb -k python3 \
	  --cwd $(call chapter_dir,$*) --no-progress-bar $(PAPERMILL_PARAMS)

ifneq ($(BOOK_RUN),)
book: $(VENV_STAMP)
	$(BOOK_ENV) $(VENV_BIN)jupyter-book build --all -W -n --keep-going --path-output . .
else
# Another model's site: the book's sources copied to $(BOOK_STAGE), that model's executed
# chapters (from `make notebooks MODEL=...`) in place of the committed ones.
book: $(VENV_STAMP)
	rm -rf $(BOOK_STAGE) && mkdir -p $(BOOK_STAGE)
	cp -r _config.yml _toc.yml book $(BOOK_STAGE)/
	if [ -d _build/$(RUN_SLUG)/chapters ]; then cp _build/$(RUN_SLUG)/chapters/*.ipynb $(BOOK_STAGE)/book/chapters/; fi
	$(BOOK_ENV) $(VENV_BIN)jupyter-book build --all -W -n --keep-going --path-output _build/$(RUN_SLUG) $(BOOK_STAGE)
	@echo "[make] $(RUN_MODEL)'s book: $(BOOK_HTML)/index.html (book/chapters left as it is)"
endif

nbval: $(VENV_STAMP)
	$(BOOK_ENV) $(PY) -m pytest -q -p no:cacheprovider --nbval --nbval-current-env \
	  --nbval-sanitize-with $(NBVAL_SANITIZE) $(CHAPTERS_DIR)

browser-check: book
	$(BOOK_ENV) $(PY) $(BOOK_MK_ROOT)/scripts/browser_check.py $(BOOK_HTML) --screenshots $(SCREENSHOTS) --install

book-clean:
	rm -rf _build

# Offline JavaScript for the static site, committed under book/assets/vendor (each file
# < 5 MB, about 6 MB in all) so that a fresh clone builds without npm or a network.
# Re-fetch (pinned versions, npm verifies each tarball's integrity) and review the diff:
VENDOR := book/assets/vendor
VENDOR_PKGS := requirejs@2.3.8 @jupyter-widgets/html-manager@1.0.6 mathjax@3.2.2
book-vendor:
	rm -rf $(VENDOR) _build/npm && mkdir -p _build/npm $(VENDOR)/mathjax/output/chtml $(VENDOR)/html-manager
	cd _build/npm && npm pack --silent $(VENDOR_PKGS) >/dev/null
	cd _build/npm && for t in *.tgz; do mkdir -p $${t%.tgz} && tar xzf $$t -C $${t%.tgz}; done
	cp _build/npm/requirejs-2.3.8/package/require.js $(VENDOR)/require.js
	cp _build/npm/jupyter-widgets-html-manager-1.0.6/package/dist/embed-amd.js \
	   _build/npm/jupyter-widgets-html-manager-1.0.6/package/dist/*.woff2 $(VENDOR)/html-manager/
	cp _build/npm/jupyter-widgets-html-manager-1.0.6/package/LICENSE $(VENDOR)/html-manager/LICENSE
	cp _build/npm/mathjax-3.2.2/package/es5/tex-chtml-full.js _build/npm/mathjax-3.2.2/package/LICENSE $(VENDOR)/mathjax/
	cp -r _build/npm/mathjax-3.2.2/package/es5/output/chtml/fonts $(VENDOR)/mathjax/output/chtml/
	cd $(VENDOR) && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | xargs sha256sum > SHA256SUMS
