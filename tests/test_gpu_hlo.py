"""benchmarks/gpu_hlo.py: the bytes of a compiled step's ops, read from XLA's optimised HLO, for this CPU and for an
H100 (with JAX's CUDA plugin, which `make test` puts in .gpu-hlo/; without it, the error says how to get it)."""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import gpu_hlo
from vision_models.errors import ConfigError


def test_array_bytes_of_arrays_and_tuples():
  assert gpu_hlo.array_bytes('bf16[256,197,768]{2,1,0}') == 2 * 256 * 197 * 768
  assert gpu_hlo.array_bytes('(f32[128,768]{1,0}, pred[3], s32[])') == 4 * 128 * 768 + 3 + 4


def test_traffic_counts_what_each_fusion_reads_and_writes():
  x = jnp.ones((512, 1024), jnp.float32)
  hlo = jax.jit(lambda x, y: (jnp.sin(x) * 2 + y, jnp.sum(x, axis=1))).lower(x, x).compile().as_text()
  ops = gpu_hlo.traffic(hlo)
  assert ops and all(op['kind'] in ('fusions', 'copies') for op in ops)
  # However XLA groups the two outputs, they read both inputs at least once and write 2 MiB + 2 KiB.
  assert sum(op['written'] for op in ops) == 4 * 512 * 1024 + 4 * 512
  assert sum(op['read'] for op in ops) >= 2 * 4 * 512 * 1024
  rows, totals = gpu_hlo.summary(ops, bandwidth=1e9)
  assert sum(row['bytes'] for row in rows) == totals['total_bytes'] == totals['memory_bound_bytes']
  assert totals['memory_bound_ms'] == pytest.approx(totals['memory_bound_bytes'] / 1e9 * 1e3)


def test_xla_options_parse_booleans_and_numbers_and_refuse_other_text():
  assert gpu_hlo.xla_option('xla_gpu_enable_cublaslt=True') == ('xla_gpu_enable_cublaslt', True)
  assert gpu_hlo.xla_option('xla_backend_optimization_level=1') == ('xla_backend_optimization_level', 1)
  assert gpu_hlo.xla_option('xla_gpu_cuda_data_dir=/usr/local/cuda') == ('xla_gpu_cuda_data_dir', '/usr/local/cuda')
  for bad in ('xla_gpu_enable_cublaslt', 'enable_cublaslt=true'):
    with pytest.raises(argparse.ArgumentTypeError, match='NAME=VALUE'):
      gpu_hlo.xla_option(bad)


def test_cpu_target_prints_kinds_and_a_summary(capsys):
  args = ['--model', 'vit_ti16', '--batch', '8', '--resolution', '32', '--dtype', 'float32', '--target', 'cpu',
          '--bandwidth', '1e10', '--top', '3', '--xla', 'xla_backend_optimization_level=1']
  assert gpu_hlo.main(args) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  kinds, top, totals = [x for x in lines if 'kind' in x and 'name' not in x], lines[-4:-1], lines[-1]
  assert {row['kind'] for row in kinds} >= {'fusions'}
  assert [op['read'] + op['written'] for op in top] == sorted((op['read'] + op['written'] for op in top), reverse=True)
  assert totals['total_bytes'] == sum(row['bytes'] for row in kinds) > totals['memory_bound_bytes'] > 0
  assert totals['temp_bytes'] > 0


PLUGIN = pathlib.Path(__file__).parent.parent / '.gpu-hlo'  # where `make test` installs JAX's CUDA plugin


@pytest.mark.skipif(not (PLUGIN / 'jax_plugins' / 'xla_cuda13').is_dir(), reason='make test installs the plugin')
def test_h100_target_fuses_the_tanh_gelu_and_the_biases_into_cublas():
  # A process of its own: the plugin loads when JAX starts, and only without a GPU backend to initialise.
  env = {**os.environ, 'PYTHONPATH': f'{PLUGIN}{os.pathsep}{PLUGIN.parent}', 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  # ViT-B/16's benchmark step: at small sizes XLA merges the q, k and v products back into one (its DotMerger).
  args = ['--model', 'vit_b16', '--batch', '256', '--dtype', 'bfloat16', '--mlp', 'mlp_tanh', '--attn-impl', 'cudnn']
  out = subprocess.run([sys.executable, '-m', 'benchmarks.gpu_hlo', *args], env=env, cwd=PLUGIN.parent,
                       capture_output=True, text=True, timeout=600, check=True).stdout
  totals = json.loads(out.strip().splitlines()[-1])
  assert totals['target'] == 'h100' and totals['memory_bound_bytes'] > 0
  # Each block's fc1 carries bias + GELU in its cuBLASLt epilogue, keeping the pre-activation for the backward pass;
  # the q, k, v, out and fc2 products and the head carry their biases (no bias written out as a matrix).
  assert totals['epilogues']['BIAS_GELU_AUX'] == 12
  assert totals['epilogues']['BIAS'] == 5 * 12 + 1


def test_gpu_target_without_the_plugin_names_it(monkeypatch):
  def missing(*args, **kwargs):
    raise NotImplementedError('topology not implemented for cuda')

  monkeypatch.setattr(gpu_hlo.topologies, 'get_topology_desc', missing)
  with pytest.raises(ConfigError, match=r'jax-cuda13-plugin==.*--target cpu'):
    gpu_hlo.gpu_devices('h100')
