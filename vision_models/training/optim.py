"""Optimizers and learning-rate schedules from optax, built from `config.optimizer`."""
from typing import Any

import optax
from flax import traverse_util

from vision_models.errors import ConfigError

# Parameters that take no weight decay besides biases and norms (ndim ≤ 1): embeddings and tokens.
NO_DECAY_NAMES = ('pos_embed', 'cls_token', 'dist_token', 'relative_position_bias_table')


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
  """True where weight decay applies: matrices and kernels, not biases, norms, embeddings or tokens."""
  flat = traverse_util.flatten_dict(params)
  mask = {k: v.ndim > 1 and not any(n in k for n in NO_DECAY_NAMES) for k, v in flat.items()}
  return traverse_util.unflatten_dict(mask)


def make(cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer chain (gradient clipping, then `cfg.name`) and its learning-rate schedule."""
  lr = schedule(cfg, total_steps)
  name = cfg.get('name', 'adamw')
  wd = cfg.get('weight_decay', 0.0)
  if name == 'adamw':
    opt = optax.adamw(lr, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.999), eps=cfg.get('eps', 1e-8),
                      weight_decay=wd, mask=decay_mask)
  elif name == 'sgd':
    opt = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                      optax.sgd(lr, momentum=cfg.get('momentum', 0.9), nesterov=cfg.get('nesterov', False)))
  else:
    raise ConfigError(f'unknown config.optimizer.name {name!r}; choose adamw or sgd')
  clip = cfg.get('grad_clip')
  return (optax.chain(optax.clip_by_global_norm(clip), opt) if clip else opt), lr

