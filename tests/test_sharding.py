"""Data, FSDP and tensor parallelism on 8 CPU devices give the same training as one device, and really shard."""
import jax
import numpy as np
import optax
import pytest

from vision_models import models, parallel
from vision_models.errors import ConfigError
from vision_models.training import state as state_lib, steps

MESHES = [dict(data=8), dict(data=2, fsdp=4), dict(data=2, fsdp=2, tensor=2)]
INPUT = (16, 16, 3)
# Adam turns gradients that are zero up to rounding (the zero-initialised head's first steps) into ±lr updates, so
# parameters agree to a fraction of one update (lr = 1e-3) rather than to float precision; losses agree to 1e-5.
PARAM_TOL = dict(rtol=2e-4, atol=5e-5)
FAMILIES = {
    # Layer scale 1 instead of 1e-6: gradients scaled by 1e-6 sit at float rounding, which Adam would amplify.
    'convnext': dict(name='convnext', depths=(1, 1), dims=(16, 32), drop_path=0.1, layer_scale=1.0),
    'vit': dict(name='vit', patch_size=4, width=32, depth=1, num_heads=4, mlp_dim=64, drop_path=0.1),
}


def train(model, mesh, accum_steps=1, num_steps=3):
  tx = optax.adamw(1e-3, weight_decay=0.05)
  shardings = state_lib.shardings(model, tx, INPUT, mesh, min_size=0)
  state = state_lib.create(model, tx, INPUT, jax.random.key(0), shardings)
  step = steps.make_train_step(steps.classification_loss(model, 0.1), tx, optax.constant_schedule(1e-3), mesh,
                               shardings, accum_steps)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(num_steps):
    batch = {'image': rng.normal(size=(16, *INPUT)).astype(np.float32),
             'label': rng.integers(0, 10, 16).astype(np.int32)}
    state, metrics = step(state, jax.device_put(batch, parallel.batch_sharding(mesh)), jax.random.key(1))
    losses.append(float(metrics['train/loss']))
  return np.array(losses), state


def single_device_mesh():
  return parallel.make_mesh(dict(data=1), devices=jax.devices()[:1])


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_sharded_training_matches_one_device(family):
  spec = dict(FAMILIES[family])
  model = models.create(spec.pop('name'), num_classes=10, **spec)
  reference, ref_state = train(model, single_device_mesh())
  total = sum(parallel.bytes_per_device((ref_state.params, ref_state.opt_state)).values())
  for axes in MESHES:
    mesh = parallel.make_mesh(axes)
    losses, state = train(model, mesh)
    np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=str(axes))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **PARAM_TOL), jax.device_get(state.params),
                 jax.device_get(ref_state.params))
    per_device = parallel.bytes_per_device((state.params, state.opt_state))
    assert len(per_device) == 8
    model_parallel = axes.get('fsdp', 1) * axes.get('tensor', 1)
    if model_parallel == 1:  # Pure data parallelism replicates everything.
      assert max(per_device.values()) == total
    else:  # Most bytes are split model_parallel ways; norms and biases stay whole.
      # Tiny test models keep a larger share of unsplittable vectors than real ones (ConvNeXt here: 1.37x ideal).
      assert max(per_device.values()) < total / model_parallel * 1.5, (axes, max(per_device.values()), total)


def test_gradient_accumulation_matches_the_full_batch():
  spec = dict(FAMILIES['vit'], drop_path=0.0)
  model = models.create(spec.pop('name'), num_classes=10, **spec)
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  full, full_state = train(model, mesh)
  accumulated, accum_state = train(model, mesh, accum_steps=2)
  np.testing.assert_allclose(accumulated, full, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **PARAM_TOL),
               jax.device_get(accum_state.params), jax.device_get(full_state.params))


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32():
  spec = dict(FAMILIES['vit'], drop_path=0.0)
  name = spec.pop('name')
  mesh = parallel.make_mesh(dict(data=8))
  reference, _ = train(models.create(name, num_classes=10, **spec), mesh)
  losses, state = train(models.create(name, num_classes=10, dtype=jax.numpy.bfloat16, **spec), mesh)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim)
  np.testing.assert_allclose(losses, reference, rtol=2e-2)


def test_mesh_errors():
  with pytest.raises(ConfigError, match='needs 16 devices'):
    parallel.make_mesh(dict(data=2, fsdp=8))
  with pytest.raises(ConfigError, match='at most one -1'):
    parallel.make_mesh(dict(data=-1, fsdp=-1))
  with pytest.raises(ConfigError, match='unknown axes'):
    parallel.make_mesh(dict(data=-1, expert=2))
  assert dict(parallel.make_mesh(dict(data=-1, tensor=2)).shape) == dict(data=4, fsdp=1, tensor=2)
