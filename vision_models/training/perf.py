"""Model FLOPs utilisation: FLOPs per step from XLA's cost analysis of the lowered step over the devices' peak."""
from typing import Any

import jax

# Dense bf16 peak FLOP/s per device (vendor spec sheets; TPU figures per chip).
PEAK_FLOPS = {
    'H100': 989e12,
    'H200': 989e12,
    'A100': 312e12,
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,  # v5e
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
}


def device_peak_flops(override: float | None = None) -> float | None:
  """The peak FLOP/s of one device of this machine, `override` when given, None when unknown (the CPU)."""
  if override:
    return float(override)
  kind = jax.devices()[0].device_kind
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if name.lower() in kind.lower():
      return PEAK_FLOPS[name]
  return None


def _flops(cost: Any) -> float | None:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return float(flops) if flops else None


def step_flops(jitted: Any, *args: Any) -> float | None:
  """FLOPs of one call of `jitted(*args)`: XLA's cost analysis of the lowered (global, unpartitioned) HLO, else of
  the compiled executable (some backends analyse only that). Custom calls (Pallas, cuDNN kernels) count nothing."""
  try:
    lowered = jitted.lower(*args)
  except Exception:  # Some backends cannot analyse every op; MFU is then just not reported.
    return None
  for analyse in (lowered.cost_analysis, lambda: lowered.compile().cost_analysis()):
    try:
      flops = _flops(analyse())
    except Exception:
      continue
    if flops:
      return flops
  return None


def mfu(flops_per_step: float | None, step_seconds: float, peak: float | None, num_devices: int) -> float | None:
  if not flops_per_step or not peak or step_seconds <= 0:
    return None
  return flops_per_step / step_seconds / (peak * num_devices)
