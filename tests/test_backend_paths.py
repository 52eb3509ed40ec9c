"""The rewrites made for XLA:CPU stay on the CPU. On an H100 two of them, once they leaked to every backend, made
ViT-B/16's bfloat16 train step 12 ms slower (89.8 against 76.5 ms, benchmarks/RESULTS.md). Traced as for a GPU, each
model holds none of their custom VJPs or optimisation barriers and embeds its patches by a convolution; traced for the
CPU it holds some. The forward pass is traced: differentiation replaces a custom VJP by its rules."""
import re

import jax
import jax.numpy as jnp
import pytest

from vision_models import models

CPU_ONLY = re.compile(r'\b(custom_vjp_call|optimization_barrier)\b')
# Off the CPU `layers.gelu_tanh` has its own VJP, keeping only its input (XLA:GPU then fuses it into the product),
# attention's q, k, v are three products forward and one backward (`models/qkv.py`), and on one GPU a ViT's norms are
# the Pallas kernels of `kernels.layer_norm`, with theirs.
NOT_ON_THE_CPU = re.compile(
    r'custom_vjp_call\[\s*name=(_gelu_tanh_recomputed|_as_three_products|add_layer_norm|layer_norm)\b')


def forward_jaxpr(name: str) -> str:
  model = models.create(name, num_classes=10, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 224, 224, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  return NOT_ON_THE_CPU.sub('gpu_vjp', str(jax.make_jaxpr(model.apply)(params, x)))


@pytest.mark.parametrize('name', ['vit_s16', 'convnext_t', 'mixer_b16', 'maxvit_t'])
def test_cpu_rewrites_only_on_the_cpu(name, monkeypatch):
  # jnp.einsum's inner jit would otherwise reuse the CPU trace of the same call for the "GPU" one.
  jax.clear_caches()
  assert CPU_ONLY.search(forward_jaxpr(name))
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  jax.clear_caches()
  jaxpr = forward_jaxpr(name)
  assert not CPU_ONLY.findall(jaxpr)
  assert 'conv_general_dilated' in jaxpr  # each stem (ViT's and Mixer's patch embedding too) a convolution
