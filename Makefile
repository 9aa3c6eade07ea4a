# Two entry points: `make demo` (set up, then run the main job) and `make test` (set up, then run
# every check CI runs). Set-up installs the CPU build of torch *before* the package, so no
# resolver pulls a multi-GB CUDA build on a CPU-only machine. On a machine with a GPU, or where
# torch 2.13.0 is not on local disk, override e.g.:
#   make test TORCH_SPEC="torch" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The TransformerLens line this venv gets (pyproject allows both 3.x and 4.x). `make setup-tl4` makes
# a second venv on TransformerLens 4.3 with transformers 5.23.0: 5.24.0 breaks TL 4.3's KV cache.
TL_SPEC ?= transformer-lens>=3.9,<4
TL4_VENV ?= .venv-tl4
TL4_SPEC ?= transformer-lens==4.3.* transformers==5.23.0

.PHONY: setup setup-tl4 test-tl4 demo reproduce reproduce-language data test lint docs bench notebooks

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]" $(foreach s,$(TL_SPEC),"$(s)")
	touch $@

setup: $(VENV)/.installed

setup-tl4:
	$(MAKE) setup VENV=$(TL4_VENV) TL_SPEC="$(TL4_SPEC)"

demo: setup
	$(BIN)/pcp-lens demo

reproduce: setup
	$(BIN)/pcp-lens reproduce toy --out runs/toy

# Jane Austen's six novels (Debian r-cran-janeaustenr, read with the rdata package), cached in
# $PCP_LENS_DATA or ~/.cache/pcp_lens; needs apt-get. `--quick` runs use a shipped sample instead.
data: setup
	$(BIN)/python -m pip install -q -e ".[corpus]"
	$(BIN)/pcp-lens data austen

reproduce-language: data
	$(BIN)/pcp-lens reproduce language --out runs/language

lint: setup
	$(BIN)/ruff check pcp_lens tests examples benchmarks scripts
	$(BIN)/pyright --pythonpath $(BIN)/python

docs: setup
	$(BIN)/mkdocs build --strict -q

# Two processes, a file's tests in one (pytest-xdist): the box has two cores and the suite is
# mostly single-threaded Python. The signal-deferral doctests of pcp_lens/_interrupt.py run in a
# process of their own afterwards (an xdist worker receives SIGTERM differently).
# `make test PYTEST_ARGS="-n 0"` runs the main part in one process.
PYTEST_ARGS ?=
test: lint docs
	$(BIN)/pytest -n 2 --dist loadfile --ignore=pcp_lens/_interrupt.py $(PYTEST_ARGS)
	$(BIN)/pytest pcp_lens/_interrupt.py

# Re-execute the tutorial notebooks from their jupytext text forms (examples/*.py with a
# notebook twin) and store the outputs the docs render; a fresh checkpoint each time. Without
# --update: jupytext skips writing when only the outputs changed.
NOTEBOOKS := quick_tour toy_study_analysis scan_walkthrough
notebooks: setup
	rm -rf examples/runs/toy_notebook
	cd examples && for nb in $(NOTEBOOKS); do \
		OMP_NUM_THREADS=1 ../$(BIN)/jupytext --to ipynb --execute $$nb.py || exit 1; \
	done
	rm -rf examples/runs
	$(BIN)/python scripts/notebook_figures.py

bench: setup
	$(BIN)/python benchmarks/bench_patching.py
	$(BIN)/python benchmarks/bench_hook_overhead.py
	$(BIN)/python benchmarks/bench_stats_memory.py
	$(BIN)/python benchmarks/bench_pcp.py
	$(BIN)/python benchmarks/bench_ablation_sweep.py
	$(BIN)/python benchmarks/bench_generation.py
