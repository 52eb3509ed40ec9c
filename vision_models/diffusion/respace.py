"""Timestep respacing (IDDPM / ADM `respace.py`): sample with a subset of the training steps, keeping ᾱ at the kept
steps, so a model trained on 1000 steps samples in 250 (DiT's default) or 50 DDIM steps."""
import numpy as np

from vision_models.diffusion.gaussian import GaussianDiffusion, linear_betas
from vision_models.errors import ConfigError


FORMS = '"250" (that many steps), "10,15,20" (steps per equal section) or "ddim50" (DDIM\'s integer stride)'


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> list[int]:
  """The sorted steps to keep. `section_counts` splits the process into equal sections and takes that many evenly
  spaced steps from each (`"250"`, `"10,15,20"`, or a list); `"ddimN"` takes the integer stride giving exactly N.
  A malformed spec raises ConfigError naming `config.sample.respacing` (where it comes from)."""
  if isinstance(section_counts, str):
    spec = section_counts
    try:
      if spec.startswith('ddim'):
        want = int(spec[len('ddim'):])
      else:
        section_counts = [int(x) for x in spec.split(',')]
    except ValueError:
      raise ConfigError(f'config.sample.respacing={spec!r} is not a respacing; use {FORMS}') from None
    if spec.startswith('ddim'):
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == want:
          return list(range(0, num_timesteps, stride))
      raise ConfigError(f'config.sample.respacing={spec!r}: cannot take exactly {want} of {num_timesteps} steps '
                        'with an integer stride (DDIM spacing)')
  if not section_counts or min(section_counts) < 0 or sum(section_counts) < 1:
    raise ConfigError(f'config.sample.respacing={section_counts!r} keeps no steps or a negative count; use {FORMS}')
  size_per, extra = divmod(num_timesteps, len(section_counts))
  start, steps = 0, []
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ConfigError(f'config.sample.respacing: cannot take {count} steps from a section of {size} of the '
                        f'{num_timesteps} steps')
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):  # Accumulated, not multiplied: the same float rounding as the official code.
      steps.append(start + round(position))
      position += stride
    start += size
  return sorted(set(steps))


def respace(base: GaussianDiffusion, use_timesteps: list[int]) -> GaussianDiffusion:
  """The diffusion over `use_timesteps` of `base`: β'_i = 1 - ᾱ_{k_i} / ᾱ_{k_{i-1}}, same ᾱ at the kept steps; the
  model keeps seeing the original timesteps."""
  kept = np.asarray(sorted(use_timesteps))
  if len(kept) == 0 or kept[0] < 0 or kept[-1] >= base.num_timesteps:
    raise ConfigError(f'respaced timesteps must lie in [0, {base.num_timesteps}), got {kept[:1]}…{kept[-1:]}')
  alphas_cumprod = base.alphas_cumprod[kept]
  betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
  return GaussianDiffusion(betas, base.var_type, base.timestep_map[kept])


def create(respacing: str | list[int] | None = None, num_timesteps: int = 1000, learn_sigma: bool = True,
           sigma_small: bool = False) -> GaussianDiffusion:
  """DiT's `create_diffusion`: linear β over `num_timesteps`, ε prediction, learned-range variance (else fixed
  large / small), optionally respaced (`"250"`, `"ddim50"`; None or "" keeps every step)."""
  var_type = 'learned_range' if learn_sigma else ('fixed_small' if sigma_small else 'fixed_large')
  base = GaussianDiffusion(linear_betas(num_timesteps), var_type)
  if not respacing:
    return base
  return respace(base, space_timesteps(num_timesteps, respacing))
