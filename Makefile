# make train: virtual environment + project + the quickstart (ViT on scikit-learn's digits, ~3 min on 2 CPU cores).
# make test:  the same environment + the test extra (torch, timm for parity) + the whole test suite.
# make gpu-check: on a GPU machine whose Python already has jax[cuda], torch and timm (no venv): gpu-tests (the
#             GPU-only tests), gpu-kernels (the kernels against cuDNN and XLA) and gpu-steps (the ViT-B/16 step's MFU and
#             ratio to timm; then with XLA's LayerNorm, and with the MLP's fused backward product), each a few minutes.
# make gpu-hlo: without a GPU, the ViT-B/16 step compiled for an H100 and its memory traffic by kind of op
#             (benchmarks/gpu_hlo.py; JAX's CUDA plugin goes to .gpu-hlo/, outside the venv, which it would slow).
SHELL := /bin/bash
VENV ?= .venv
WORKDIR ?= workdirs/quickstart
CONFIG ?= configs/quickstart.py
PYTEST_ARGS ?=
GPU_PYTHON ?= python3

# The first Python >= 3.12 on the PATH or under pyenv (jax >= 0.11 needs 3.12).
PYTHON ?= $(shell for p in python3.14 python3.13 python3.12 python3 $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3; do \
  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
  && { command -v $$p; break; }; done)

.PHONY: train test venv clean gpu-check gpu-tests gpu-kernels gpu-steps gpu-hlo

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "error: no Python >= 3.12 found (jax >= 0.11 needs it); install one (e.g. 'pyenv install 3.12') or run 'make PYTHON=/path/to/python3.12'" >&2; exit 1; fi
	@echo "Using $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/python train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(VENV)/bin/python eval.py --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(VENV)/.installed-test .gpu-hlo/jax_plugins
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

gpu-check: gpu-tests gpu-kernels gpu-steps

gpu-tests:
	$(GPU_PYTHON) -m pytest -q -p no:cacheprovider tests/test_flash_attention_gpu.py tests/test_device_preprocess_gpu.py \
	  tests/test_layer_norm_kernel_gpu.py tests/test_gelu_matmul_gpu.py

# Each bar is the issue's; every command runs, and the target fails when any missed its bar.
gpu-kernels:
	status=0; \
	$(GPU_PYTHON) -m benchmarks.fused_kernels || status=1; \
	$(GPU_PYTHON) -m benchmarks.attention --seqs 197 --batch 256 --heads 12 --dtype bfloat16 --repeats 30 \
	  --max-ratio 1.25 || status=1; \
	$(GPU_PYTHON) -m benchmarks.attention --seqs 4096 --batch 4 --heads 16 --dtype bfloat16 --repeats 30 \
	  --max-ratio 1.25 || status=1; \
	exit $$status

# MFU >= 50% with the best attention (cudnn) and ours at least timm's speed; then each change's A/B row.
gpu-steps:
	status=0; \
	for impl in cudnn pallas; do $(GPU_PYTHON) -m benchmarks.train_step --model vit_b16 --batch 256 --dtype bfloat16 \
	  --mlp mlp_tanh --attn-impl $$impl --steps 15 --warmup 3 --against-timm --min-ratio 1.0 --matmul-rate 8192 \
	  $$([ $$impl = cudnn ] && echo --min-mfu 0.5) || status=1; done; \
	for flag in '--norm-impl xla' '--mlp-backward pallas'; do $(GPU_PYTHON) -m benchmarks.train_step --model vit_b16 \
	  --batch 256 --dtype bfloat16 --mlp mlp_tanh --attn-impl cudnn $$flag --steps 15 --warmup 3 || status=1; done; \
	exit $$status

# JAX's CUDA plugin for the installed jax, outside the venv (tests/test_gpu_hlo.py uses it when it is there).
.gpu-hlo/jax_plugins: $(VENV)/.installed-test
	JAX=$$($(VENV)/bin/python -c 'import jax; print(jax.__version__)'); rm -rf .gpu-hlo; \
	  $(VENV)/bin/pip install -q --no-deps --target .gpu-hlo "jax-cuda13-plugin==$$JAX" "jax-cuda13-pjrt==$$JAX" \
	  || echo "warning: no CUDA plugin for jax $$JAX: benchmarks/gpu_hlo.py can only read CPU steps" >&2
	mkdir -p $@

gpu-hlo: .gpu-hlo/jax_plugins
	PYTHONPATH=.gpu-hlo JAX_PLATFORMS=cpu $(VENV)/bin/python -m benchmarks.gpu_hlo --model vit_b16 --batch 256 \
	  --dtype bfloat16 --mlp mlp_tanh --attn-impl cudnn --top 10

clean:
	rm -rf $(VENV) workdirs .gpu-hlo
