# mailbak build and test entry points. Everything lives in .venv under the checkout; a fresh
# machine needs only python3 (3.11+), a Rust toolchain and make.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUST_SRC := $(wildcard rust/*.rs rust/*/*.rs) Cargo.toml Cargo.lock
PY_META := pyproject.toml

.PHONY: all setup system-deps dev release test test-fast test-rust test-python lint demo bench-smoke bench clean

all: setup

# Debian packages of the tools the tests drive (lmdb-utils, ...): installed when missing, as root;
# otherwise the script says what to install.
system-deps:
	sh scripts/system-deps

# A virtualenv with the package installed editable and the extension built in release mode.
$(STAMP): $(RUST_SRC) $(PY_META) | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'maturin>=1.5,<2.0'
	rm -f python/mailbak/_engine*.so
	$(VENV)/bin/maturin develop --release --extras test,lint -q
	touch $@

setup: $(STAMP)

# Debug build of the extension (faster to compile; slow engine).
dev:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'maturin>=1.5,<2.0'
	rm -f python/mailbak/_engine*.so
	$(VENV)/bin/maturin develop --extras test,lint -q
	rm -f $(STAMP)

release: $(STAMP)

test: $(STAMP) test-rust test-python

test-rust:
	cargo test --quiet

test-python: $(STAMP)
	$(PY) -m pytest -q

# The inner loop: every Python test but those marked slow (off-site through restic, the benchmark
# smoke runs, the 200k-file hostile case), one worker per core (pytest-xdist: 94 to 119 s on 2 cores,
# against 228 s in one process, since most of a test's time is spent waiting on the mailbak it
# runs); CI's `make test` runs everything, in one process.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m 'not slow' -n auto

# The linters CI runs: rustfmt, clippy (the PyO3 glue included, missing docs denied), ruff (lint
# and format), import-linter (the package's layers, pyproject.toml), and mypy's stubtest of the
# hand-written stub against the built extension (type-only names are allowlisted).
lint: $(STAMP)
	cargo fmt --check
	cargo clippy --quiet --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests bench
	$(VENV)/bin/ruff format --check python tests bench
	cd python && ../$(VENV)/bin/lint-imports --no-cache ../pyproject.toml
	$(PY) -m mypy.stubtest mailbak._engine --allowlist .ci/stubtest-allowlist

# Generates a 20k-message sample store in a temporary directory and runs backup, verify and
# restore on it.
demo: $(STAMP)
	$(VENV)/bin/mailbak demo

bench-smoke: $(STAMP)
	$(PY) bench/run.py --smoke

bench: $(STAMP)
	$(PY) bench/run.py --messages 1000000 --accounts 50 --repeat 3

clean:
	rm -rf $(VENV) target python/mailbak/_engine*.so .pytest_cache .hypothesis
