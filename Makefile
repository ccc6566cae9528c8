# keras-dyart: the two commands of the README are `make train` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BACKENDS := tensorflow jax torch

.PHONY: install train lint test docs bench methods device-wheels clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The CPU torch 2.13.0 wheel goes in first, so the project's torch range is already met
# and pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,dev,docs,keras-cv]"
	# The independent AutoAttack of the parity test; --no-deps keeps pip from pulling
	# torchvision (its other needs, scipy, tqdm and requests, come with the dev extra).
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

install: $(STAMP)

# DyART with the methods study's best setting (docs/study.md: rate 0.1 from its tuning,
# r0 0.45 from its ablations); `keras-dyart train`'s own defaults stay lr 0.05, r0 0.6.
train: $(STAMP)
	$(BIN)/keras-dyart train --lr 0.1 --r0 0.45 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# The three backends' legs run side by side: much of a leg is single-threaded tracing and
# compiling, so on two cores the suite takes about half the time it takes one leg after the
# other. Each leg's output is shown whole when all have ended, and any failure fails the
# target. SERIAL=1 runs the legs one after the other with live output.
# Side by side, each leg (and every process it starts) computes on one thread (LEG_THREADS):
# three legs' thread pools on two cores spend their time waiting for each other (PyTorch's
# OpenMP workers spin). Measured with a torch, a JAX and a TensorFlow test file run
# together: 338 / 240 / 248 s with the libraries' own pools, 260 / 199 / 214 s on one thread.
LEG_THREADS ?= 1
LEG_ENV := OMP_NUM_THREADS=$(LEG_THREADS) MKL_NUM_THREADS=$(LEG_THREADS) \
  TF_NUM_INTRAOP_THREADS=$(LEG_THREADS) \
  XLA_FLAGS="$(XLA_FLAGS) --xla_cpu_multi_thread_eigen=false \
  intra_op_parallelism_threads=$(LEG_THREADS)"
test: lint
ifdef SERIAL
	@set -e; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b ==="; \
	  KERAS_BACKEND=$$b $(BIN)/python -m pytest -q $(PYTEST_ARGS) || exit $$?; \
	done
else
	@logs=$$(mktemp -d); \
	for b in $(BACKENDS); do \
	  ( start=$$(date +%s); \
	    $(LEG_ENV) KERAS_BACKEND=$$b $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) \
	      > $$logs/$$b.log 2>&1; \
	    rc=$$?; echo $$rc > $$logs/$$b.rc; \
	    echo "--- KERAS_BACKEND=$$b ended: exit $$rc after $$(( $$(date +%s) - start )) s" ) & \
	done; \
	wait; status=0; \
	for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b ==="; cat $$logs/$$b.log; \
	  [ "$$(cat $$logs/$$b.rc)" = 0 ] || status=1; \
	done; \
	rm -rf $$logs; exit $$status
endif

# One backend: make test-jax (a pattern rule, so not in .PHONY, which would skip it).
test-%: $(STAMP)
	KERAS_BACKEND=$* $(BIN)/python -m pytest -q $(PYTEST_ARGS)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/step_time.py

# The methods study (hours on a CPU; stops and resumes): docs/study.md.
methods: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/methods.py --all

# Wheels for the GPU machine (Python 3.12, CUDA PyTorch and JAX, no Keras, no network) into
# the ignored .device-wheels/; benchmarks/device/run.sh installs them there.
device-wheels: $(STAMP)
	bash benchmarks/device/fetch_wheels.sh

clean:
	rm -rf $(VENV) build *.egg-info site
