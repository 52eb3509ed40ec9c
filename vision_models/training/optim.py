"""Optimizers and learning-rate schedules from optax, built from `config.optimizer`.

Keys: `name` ('adamw' | 'sgd' | 'lamb' | 'adafactor'), `learning_rate`, `warmup_steps`, `schedule`, `end_lr`,
`weight_decay` (masked: see `decay_mask`), `grad_clip`, the optimizer's own (`b1`, `b2`, `eps`, `mu_dtype`,
`momentum`, `nesterov`, Adafactor's `decay_rate`, `multiply_by_parameter_scale`, `clipping_threshold`),
`layer_decay` with `layer_decay_scheme` (fine-tuning) and `ema_decay` (an EMA of the weights, read by `ema_params`).
"""
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from vision_models.errors import ConfigError

# Parameters that take no weight decay besides biases and norms (ndim ≤ 1): embeddings and tokens.
NO_DECAY_NAMES = ('pos_embed', 'cls_token', 'dist_token', 'relative_position_bias_table')
# Top-level parameters that are the input layer for layer-wise learning-rate decay (besides `stem*`).
EMBEDDING_NAMES = ('patch_embed', 'cls_token', 'dist_token', 'pos_embed', 'mask_token')
_BLOCK = re.compile(r'blocks_(\d+)')
_STAGE = re.compile(r'stages_(\d+)_(?:blocks_(\d+)$|downsample)')
LAYER_DECAY_SCHEMES = ('block', 'group')


def schedule(cfg: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then `cfg.schedule` ('cosine' | 'linear' | 'constant') to `cfg.end_lr`."""
  lr, warmup = cfg.learning_rate, min(cfg.get('warmup_steps', 0), total_steps)
  end_lr = cfg.get('end_lr', 0.0)
  decay_steps = max(total_steps - warmup, 1)
  decays = {
      'cosine': lambda: optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr / lr if lr else 0.0),
      'linear': lambda: optax.linear_schedule(lr, end_lr, decay_steps),
      'constant': lambda: optax.constant_schedule(lr),
  }
  name = cfg.get('schedule', 'cosine')
  if name not in decays:
    raise ConfigError(f'unknown config.optimizer.schedule {name!r}; choose one of {", ".join(decays)}')
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decays[name]()], [warmup])


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: matrices and kernels, not biases (attention's q/k/v biases are 2-D), norms,
  embeddings, tokens or relative position tables."""
  def decays(path: tuple[str, ...], leaf) -> bool:
    is_bias = path[-1] == 'bias' or path[-1].endswith('_bias')
    return leaf.ndim > 1 and not is_bias and not any(n in path for n in NO_DECAY_NAMES)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: decays(k, v) for k, v in flat.items()})


def _top_names(params: Any) -> list[str]:
  return [path[0].key for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def layer_ids(params: Any, scheme: str = 'block') -> tuple[dict[str, int], int]:
  """Layer of each top-level parameter name for layer-wise lr decay, and the number of layers (head = last).

  ViT / Mixer (`blocks_i`): embeddings and stem 0, block i → i + 1, final norm and head depth + 1 (BEiT, timm).
  Stage models (`stages_s_blocks_j`: ConvNeXt, MaxViT), as the ConvNeXt repositories do: 'block' gives every block
  its own layer in order (the stem is stage 0's downsampling, layer 1; stage s's downsampling shares its first
  block's layer); 'group' is ConvNeXt V1's 12 groups: stem 0, stages 0 and 1 → 1 and 2, stage 2 block j → 3 + j // 3,
  stage 3 → 12, head 13.
  """
  if scheme not in LAYER_DECAY_SCHEMES:
    raise ConfigError(f'unknown config.optimizer.layer_decay_scheme {scheme!r}; choose one of '
                      f'{", ".join(LAYER_DECAY_SCHEMES)}')
  names = sorted(set(_top_names(params)))
  blocks = [int(m[1]) for n in names if (m := _BLOCK.fullmatch(n))]
  stages = {n: (int(m[1]), int(m[2] or 0)) for n in names if (m := _STAGE.match(n))}
  is_input = lambda n: n.startswith('stem') or n in EMBEDDING_NAMES
  if blocks:
    depth = max(blocks) + 1
    layer = lambda n: 0 if is_input(n) else int(m[1]) + 1 if (m := _BLOCK.fullmatch(n)) else depth + 1
    return {n: layer(n) for n in names}, depth + 2
  if not stages:
    raise ConfigError('layer-wise lr decay (config.optimizer.layer_decay) needs a model with `blocks_i` (ViT, Mixer) '
                      f'or `stages_s_blocks_j` (ConvNeXt, MaxViT) parameters; got {", ".join(names)}')
  if scheme == 'group':
    def group(stage, block):
      return stage + 1 if stage < 2 else 3 + block // 3 if stage == 2 else 12
    return {n: 0 if is_input(n) else group(*stages[n]) if n in stages else 13 for n in names}, 14
  num_stages = max(s for s, _ in stages.values()) + 1
  depths = [1 + max([b for s, b in stages.values() if s == i], default=0) for i in range(num_stages)]
  starts = [sum(depths[:i]) for i in range(num_stages)]
  return {n: 1 if is_input(n) else starts[stages[n][0]] + stages[n][1] + 1 if n in stages else sum(depths) + 1
          for n in names}, sum(depths) + 2


def layer_decay_scales(params: Any, decay: float, scheme: str = 'block') -> Any:
  """A tree like `params` of learning-rate multipliers decay^(num_layers − 1 − layer): 1 for the head."""
  ids, num_layers = layer_ids(params, scheme)
  return jax.tree_util.tree_map_with_path(lambda path, _: decay ** (num_layers - 1 - ids[path[0].key]), params)


def scale_by_layer_decay(decay: float, scheme: str = 'block') -> optax.GradientTransformation:
  """Multiplies each update by its layer's `layer_decay_scales` (place it after the optimizer: it scales the whole
  step, decoupled weight decay included, like timm's per-group learning rates)."""
  def scale(updates, params=None):
    return jax.tree.map(lambda u, s: u * s, updates, layer_decay_scales(updates, decay, scheme))
  return optax.stateless(scale)


class EmaParamsState(NamedTuple):
  ema_params: Any


def ema_weights(decay: float) -> optax.GradientTransformation:
  """Keeps ema ← decay·ema + (1 − decay)·params of the parameters after each step; updates pass through. Place it
  last in the chain: it needs the updates in their final form. Its state is read with `ema_params(opt_state)`."""
  def init(params):
    return EmaParamsState(jax.tree.map(lambda p: jnp.array(p, copy=True), params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('ema_weights needs the parameters: call tx.update(grads, opt_state, params)')
    new = optax.apply_updates(params, updates)
    return updates, EmaParamsState(optax.incremental_update(new, state.ema_params, 1.0 - decay))

  return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any | None:
  """The EMA of the weights kept by `ema_weights` in `opt_state`, or None when the optimizer keeps none."""
  return optax.tree_utils.tree_get(opt_state, 'ema_params')


def _optimizer(cfg: Any, lr: optax.Schedule) -> optax.GradientTransformation:
  name, wd = cfg.get('name', 'adamw'), cfg.get('weight_decay', 0.0)
  if name == 'adamw':
    return optax.adamw(lr, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.999), eps=cfg.get('eps', 1e-8),
                       mu_dtype=cfg.get('mu_dtype'), weight_decay=wd, mask=decay_mask)
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                       optax.sgd(lr, momentum=cfg.get('momentum', 0.9), nesterov=cfg.get('nesterov', False)))
  if name == 'lamb':
    return optax.lamb(lr, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.999), eps=cfg.get('eps', 1e-6),
                      weight_decay=wd, mask=decay_mask)
  if name == 'adafactor':
    return optax.adafactor(lr, decay_rate=cfg.get('decay_rate', 0.8), momentum=cfg.get('momentum'),
                           multiply_by_parameter_scale=cfg.get('multiply_by_parameter_scale', True),
                           clipping_threshold=cfg.get('clipping_threshold', 1.0), weight_decay_rate=wd or None,
                           weight_decay_mask=decay_mask)
  raise ConfigError(f'unknown config.optimizer.name {name!r}; choose adamw, sgd, lamb or adafactor')


def make(cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer chain (gradient clipping, `cfg.name`, layer-wise lr decay, weight EMA) and its schedule."""
  lr = schedule(cfg, total_steps)
  clip, layer_decay, ema_decay = cfg.get('grad_clip'), cfg.get('layer_decay'), cfg.get('ema_decay')
  parts = [optax.clip_by_global_norm(clip)] if clip else []
  parts.append(_optimizer(cfg, lr))
  if layer_decay:
    parts.append(scale_by_layer_decay(layer_decay, cfg.get('layer_decay_scheme', 'block')))
  if ema_decay:
    if not 0 < ema_decay < 1:
      raise ConfigError(f'config.optimizer.ema_decay={ema_decay} must be in (0, 1), e.g. 0.9999')
    parts.append(ema_weights(ema_decay))
  return (optax.chain(*parts) if len(parts) > 1 else parts[0]), lr
