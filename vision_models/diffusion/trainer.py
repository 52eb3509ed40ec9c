"""The diffusion trainer (`config.task = 'diffusion'`): setup → state (fresh or restored) → loop of train steps with
logging and checkpoints; `evaluate` samples a workdir's EMA model (batch-sharded), writes `DIR/samples.npz`, a PNG
grid and `DIR/eval.json`, and optionally scores the samples with a classifier trained by the classification trainer.

Training runs the classification trainer's loop (`training.trainer.run`) with a `DiffusionTask`: the model call
`(x, t, y)`, the loss of `config.diffusion.objective` ('ddpm': DiT's hybrid loss; 'rectified_flow': `flow`) and the EMA
weights in the state differ; SIGTERM checkpointing, non-finite guards and corrupt-checkpoint fallback are the loop's.
The model input is `config.data.feature` of the examples ('image', or 'latent' for an `encode_latents` dataset).
"""
import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vision_models import data, kernels, models, parallel
from vision_models.diffusion import flow, respace, samplers, train_step
from vision_models.diffusion.gaussian import GaussianDiffusion
from vision_models.errors import ConfigError
from vision_models.training import optim, setup as setup_lib, trainer as trainer_lib
from vision_models.training.checkpoint import Checkpointer


OBJECTIVES = ('ddpm', 'rectified_flow')


@dataclasses.dataclass
class Setup(setup_lib.Setup):
  """The classification setup plus the diffusion process (`state_shardings` holds a `DiffusionState`)."""
  diffusion: GaussianDiffusion | None  # None for rectified flow.

  @property
  def objective(self) -> str:
    return self.config.diffusion.get('objective', 'ddpm')


def build(config: Any, workdir: str | None = None) -> Setup:
  """Checks the config against the data, devices and model (ConfigError naming the field) and builds the pieces."""
  if workdir is not None:
    setup_lib.check_writable(workdir)
  dataset = data.info(config.data.name, config.data.get('data_dir'))
  mesh = parallel.make_mesh(config.mesh)
  dp = parallel.data_parallel_size(mesh)
  if config.batch_size % dp or config.batch_size % jax.process_count():
    raise ConfigError(f'config.batch_size={config.batch_size} is not divisible by the data-parallel size {dp} '
                      f'and process count {jax.process_count()}; use a multiple of {dp}')
  if config.data.get('pp_device'):
    raise ConfigError('config.data.pp_device is for classification; a diffusion run preprocesses in pp_train')
  kernels.resolve_impl(config.model.get('attn_impl', 'xla'))
  size, channels = config.data.image_size, config.data.get('channels', 3)
  model = models.create(config.model.name, **{'num_classes': dataset.num_classes, 'input_size': size,
                                              'in_channels': channels, **setup_lib.model_kwargs(config)})
  if size % model.patch_size:
    raise ConfigError(f'config.data.image_size={size} is not divisible by the patch size {model.patch_size}')
  objective = config.diffusion.get('objective', 'ddpm')
  if objective not in OBJECTIVES:
    raise ConfigError(f'unknown config.diffusion.objective {objective!r}; choose one of {", ".join(OBJECTIVES)}')
  if objective == 'rectified_flow' and model.learn_sigma:
    raise ConfigError('rectified flow predicts a velocity only: set config.model.learn_sigma=False')
  input_shape = (size, size, channels)
  tx, lr_schedule = optim.make(config.optimizer, config.total_steps)
  rules = tuple(config.get('sharding_rules', parallel.DEFAULT_RULES))
  try:  # Traces the model abstractly: shape errors surface here, before any compilation.
    shardings = train_step.shardings(model, tx, input_shape, mesh, rules)
  except (ValueError, TypeError) as e:
    raise ConfigError(f'model {config.model.name!r} cannot take input {input_shape}: {e}') from None
  diffusion = None
  if objective == 'ddpm':
    diffusion = respace.create(None, config.diffusion.get('num_timesteps', 1000), learn_sigma=model.learn_sigma)
  s = Setup(config, model, mesh, dataset, input_shape, tx, lr_schedule, shardings, rules, diffusion)
  if config.get('sample') is not None:  # Checked here too, so a bad one fails before training, not hours after.
    check_sample(s, config.sample)
  return s


def check_sample(s: Setup, cfg: Any) -> None:
  """Raises ConfigError naming the `config.sample` field that `generate` / `evaluate` could not use."""
  if s.diffusion is not None:
    methods, default = samplers.METHODS, 'ddpm'
    if cfg.get('respacing', '250'):
      respace.space_timesteps(s.diffusion.num_timesteps, cfg.get('respacing', '250'))
  else:
    methods, default = flow.METHODS, 'euler'
    num_steps = cfg.get('num_steps', 50)
    if not isinstance(num_steps, int) or num_steps < 1:
      raise ConfigError(f'config.sample.num_steps={num_steps!r} must be a positive integer')
  method = cfg.get('method', default)
  if method not in methods:
    raise ConfigError(f'unknown config.sample.method {method!r} for config.diffusion.objective={s.objective!r}; '
                      f'choose one of {", ".join(methods)}')
  if cfg.get('num_samples', 1) < 1:
    raise ConfigError(f'config.sample.num_samples={cfg.num_samples} must be positive')
  batch_size = cfg.get('batch_size', s.config.batch_size)
  dp = parallel.data_parallel_size(s.mesh)
  if batch_size < 1 or batch_size % (dp * jax.process_count()):
    raise ConfigError(f'config.sample.batch_size={batch_size} must be a positive multiple of the '
                      f'{dp * jax.process_count()} data-parallel devices')
  k, channels = cfg.get('guidance_channels'), s.input_shape[-1]
  if k is not None and not 1 <= k <= channels:
    raise ConfigError(f'config.sample.guidance_channels={k} must be None (all) or in [1, {channels}]')
  if cfg.get('classifier_config') and not cfg.get('classifier_workdir'):
    raise ConfigError('config.sample.classifier_config is set but config.sample.classifier_workdir is not; set it to '
                      'the classifier\'s workdir (trained there first when it has no checkpoint)')


def _checkpointer(config: Any, workdir: str) -> Checkpointer:
  return Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=config.get('keep_checkpoints', 3))


class DiffusionTask(trainer_lib.Task):
  """Diffusion for the shared loop: the DiT call `(x, t, y)`, the objective's loss, EMA weights in the state, no
  evaluation while training (`evaluate` samples)."""
  postfix = (('loss', 'train/loss', '.4f'), ('mse', 'train/mse', '.4f'))

  def build(self, config: Any, workdir: str | None) -> Setup:
    return build(config, workdir)

  def abstract_state(self) -> train_step.DiffusionState:
    s = self.s
    return train_step.abstract(s.model, s.tx, s.input_shape, s.state_shardings)

  def create_state(self, rng: jax.Array) -> train_step.DiffusionState:
    s = self.s
    return train_step.create(s.model, s.tx, s.input_shape, rng, s.state_shardings)

  def loss_fn(self):
    s, cfg = self.s, self.config.diffusion
    if s.objective == 'rectified_flow':
      return train_step.flow_loss(s.model, s.rules, cfg.get('timestep_sampling', 'logit_normal'),
                                  cfg.get('logit_mean', 0.0), cfg.get('logit_std', 1.0))
    return train_step.gaussian_loss(s.model, s.diffusion, s.rules)

  @property
  def ema_decay(self) -> float:
    return self.config.get('ema_decay', 0.9999)

  def evaluator(self):
    return None

  def state_from_variables(self, variables: Any) -> train_step.DiffusionState:
    def make(v):
      v = dict(v)
      params = v.pop('params')
      return train_step.DiffusionState(jnp.zeros((), jnp.int32), params, self.s.tx.init(params), v, params)
    return jax.jit(make, out_shardings=self.s.state_shardings)(variables)

  def model_for(self, config: Any) -> nn.Module:
    return models.create(config.model.name, **{'num_classes': self.s.dataset.num_classes,
                                               'input_size': config.data.image_size,
                                               'in_channels': config.data.get('channels', 3),
                                               **setup_lib.model_kwargs(config)})

  def model_inputs(self, batch: dict, rng: jax.Array) -> tuple:
    """(x_t, model timesteps, labels) of the batch's examples noised at random times of the objective."""
    x, y = batch['image'], batch['label']
    t_rng, noise_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, x.shape, x.dtype)
    if self.s.diffusion is None:
      t = flow.timesteps(t_rng, x.shape[0])
      return flow.interpolate(x, noise, t), flow.TIME_SCALE * t, y
    t = jax.random.randint(t_rng, (x.shape[0],), 0, self.s.diffusion.num_timesteps)
    return self.s.diffusion.q_sample(x, t, noise), self.s.diffusion.model_timesteps(t), y


def train(config: Any, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` with the shared loop (`training.trainer.run`), resuming from its latest good
  checkpoint; returns the last logged metrics."""
  return trainer_lib.run(DiffusionTask(config, workdir), workdir)


def make_sampler(s: Setup, cfg: Any):
  """`sample(params, model_state, labels, rng) -> x_0` as one jit: the whole chain (DDPM: respaced per
  `cfg.respacing`, `cfg.method` 'ddpm' | 'ddim'; rectified flow: `cfg.num_steps` of `cfg.method` 'euler' | 'heun')
  with guidance `cfg.cfg_scale` (> 1 guides, as the official `sample_ddp.py`) on `cfg.guidance_channels` (None:
  all), labels and samples split over the data-parallel devices."""
  if s.diffusion is not None:
    diffusion = respace.create(cfg.get('respacing', '250'), s.diffusion.num_timesteps,
                               learn_sigma=s.model.learn_sigma)
  scale = cfg.get('cfg_scale', 1.0)

  def run(params, model_state, labels, rng):
    def model_fn(x, t, y):
      with nn.logical_axis_rules(s.rules):
        return s.model.apply({'params': params, **model_state}, x, t, y, train=False)
    fn = samplers.guided(model_fn, scale, s.model.num_classes, cfg.get('guidance_channels')) if scale > 1 else model_fn
    noise_rng, chain_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, (labels.shape[0], *s.input_shape))
    if s.diffusion is None:
      return flow.sample(fn, noise, labels, cfg.get('num_steps', 50), cfg.get('method', 'euler'))
    return samplers.sample(fn, diffusion, noise, labels, chain_rng, cfg.get('method', 'ddpm'), cfg.get('eta', 0.0),
                           cfg.get('clip_denoised', False))

  batch = parallel.batch_sharding(s.mesh)
  shardings = (s.state_shardings.params, s.state_shardings.model_state, batch, parallel.replicated(s.mesh))
  return parallel.under_mesh(jax.jit(run, in_shardings=shardings, out_shardings=batch), s.mesh)


def _decoder(path: str | None):
  """Latents → images with the SD-VAE at `path` (`config.sample.vae`), identity without one."""
  if not path:
    return lambda x: x
  from vision_models.diffusion import vae as vae_lib
  module, variables = vae_lib.load_pretrained(path)
  decode = jax.jit(lambda z: module.apply(variables, z / vae_lib.SCALE, method=module.decode))
  return lambda x: np.asarray(decode(np.asarray(x)))


def generate(s: Setup, params: Any, model_state: Any, labels: np.ndarray, cfg: Any) -> np.ndarray:
  """uint8 NHWC samples for every label (in batches of `cfg.batch_size`, padded to a full last batch); latents are
  decoded by the VAE `cfg.vae` (a diffusers .safetensors) when given."""
  check_sample(s, cfg)
  sample = make_sampler(s, cfg)
  decode = _decoder(cfg.get('vae'))
  batch_size = cfg.get('batch_size', s.config.batch_size)
  padded = np.resize(labels, -(-len(labels) // batch_size) * batch_size).astype(np.int32)
  per_host = batch_size // jax.process_count()
  out = []
  for i in tqdm(range(len(padded) // batch_size), desc='sample', disable=jax.process_index() != 0):
    local = padded[i * batch_size:][:batch_size][jax.process_index() * per_host:][:per_host]
    y = parallel.to_global({'label': local}, s.mesh)['label']
    x = sample(params, model_state, y, jax.random.fold_in(jax.random.key(cfg.get('seed', 0)), i))
    out.append(samplers.to_uint8(decode(multihost_utils.process_allgather(x, tiled=True))))
  return np.concatenate(out)[:len(labels)]


def save_grid(path: str, images: np.ndarray, labels: np.ndarray, columns: int = 10, upscale: int = 1) -> None:
  """A PNG with one row per class (its first `columns` samples), nearest-neighbour upscaled."""
  from PIL import Image
  rows = [images[labels == c][:columns] for c in np.unique(labels)]
  h, w, ch = images.shape[1:]
  grid = np.zeros((len(rows) * (h + 1), columns * (w + 1), ch), np.uint8)
  for r, row in enumerate(rows):
    for c, image in enumerate(row):
      grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = image
  grid = grid.repeat(upscale, 0).repeat(upscale, 1)
  Image.fromarray(grid[..., 0] if ch == 1 else grid).save(path)


def classifier_accuracy(images: np.ndarray, labels: np.ndarray, config_path: str, workdir: str) -> dict[str, Any]:
  """Top-1 accuracy of the classifier in `workdir` (trained from `config_path` first if it has no checkpoint) on
  uint8 images, preprocessed by the classifier's own `pp_eval`."""
  from vision_models.data.images import preprocess_arrays
  from vision_models.training import state as state_lib, steps, trainer as cls_trainer

  config = setup_lib.load_config(config_path, 'sample.classifier_config')
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  if ckpt.latest_step() is None:
    print(f'No classifier checkpoint in {workdir}: training {config_path} there first')
    cls_trainer.train(config, workdir)
    ckpt.manager.reload()
  s = setup_lib.build(config, workdir)
  state = ckpt.restore(state_lib.abstract(s.model, s.tx, s.input_shape, s.state_shardings))
  ckpt.close()
  processed = preprocess_arrays({'image': images, 'label': labels.astype(np.int64)}, config.data.pp_eval)
  eval_step = steps.make_eval_step(s.model, s.mesh, s.state_shardings.params, s.state_shardings.model_state, s.rules)
  batch, hits, per_class = s.config.batch_size, 0.0, np.zeros((2, s.dataset.num_classes))
  for i in range(0, len(images), batch):  # Single-host: the samples were gathered on every host.
    x, y = processed['image'][i:i + batch], processed['label'][i:i + batch].astype(np.int32)
    n, pad = len(y), batch - len(y)
    sums = jax.device_get(eval_step(state.params, state.model_state, {
        'image': np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]),
        'label': np.concatenate([y, np.zeros(pad, np.int32)]),
        'mask': np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])}))
    hits += float(sums['top1'])
    per_class += np.stack([sums['class_hits'], sums['class_count']])
  accuracy = per_class[0] / np.maximum(per_class[1], 1)
  return {'eval/classifier_accuracy': hits / len(images),
          'eval/classifier_per_class_accuracy': [round(float(a), 4) for a in accuracy]}


def evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Samples `config.sample.num_samples` images (labels cycling over the classes) from the latest good checkpoint's
  EMA weights (raw weights with `use_ema=False`); writes `DIR/samples.npz` (`images` uint8 NHWC, `labels`),
  `DIR/samples.png` and `DIR/eval.json`."""
  s = build(config, workdir)
  ckpt = _checkpointer(config, workdir)
  step, state = ckpt.restore_latest_good(train_step.abstract(s.model, s.tx, s.input_shape, s.state_shardings))
  ckpt.close()
  if step is None:
    raise ConfigError(f'no checkpoint in {ckpt.directory}; train first: python train.py --config=... '
                      f'--workdir={workdir}')
  cfg = config.sample
  labels = np.arange(cfg.num_samples) % s.dataset.num_classes
  params = state.ema_params if cfg.get('use_ema', True) else state.params
  images = generate(s, params, state.model_state, labels, cfg)
  results: dict[str, Any] = {'step': step, 'eval/num_samples': len(images)}
  if cfg.get('classifier_config'):
    results.update(classifier_accuracy(images, labels, cfg.classifier_config, cfg.classifier_workdir))
  if jax.process_index() == 0:
    np.savez(os.path.join(workdir, 'samples.npz'), images=images, labels=labels)
    save_grid(os.path.join(workdir, 'samples.png'), images, labels, upscale=max(1, 64 // images.shape[1]))
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(results, f, indent=1)
  return results
