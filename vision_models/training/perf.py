"""Model FLOPs utilisation: FLOPs per step from XLA's cost analysis of the lowered step over the devices' peak."""
import math
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


def _cost_flops(cost: Any) -> float | None:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return float(flops) if flops else None


def _sub_jaxprs(params: dict):
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, 'eqns'):
        yield item
      elif hasattr(item, 'jaxpr') and hasattr(item.jaxpr, 'eqns'):
        yield item.jaxpr


def jaxpr_flops(jaxpr: Any) -> float:
  """2 · multiply-adds of every dot_general and convolution in a jaxpr (scan bodies times their length), for backends
  whose lowered cost analysis is unavailable (the PJRT C-API GPU plugin). Elementwise ops are left out: a ViT train
  step counts about 5% under XLA's figure."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name, out = eqn.primitive.name, eqn.outvars[0].aval
    if name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      total += 2.0 * math.prod(out.shape) * math.prod(eqn.invars[0].aval.shape[d] for d in contract)
    elif name == 'conv_general_dilated':  # each output element: in_features / groups x kernel window products
      rhs = eqn.invars[1].aval.shape
      total += 2.0 * math.prod(out.shape) * math.prod(rhs) / rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
    repeat = eqn.params.get('length', 1) if name == 'scan' else 1
    total += repeat * sum(jaxpr_flops(sub) for sub in _sub_jaxprs(eqn.params))
  return total


def step_flops(jitted: Any, *args: Any) -> float | None:
  """FLOPs of one call of `jitted(*args)` from XLA's cost analysis of its lowered (global, unpartitioned) HLO; where
  the backend has no such analysis (GPUs through the PJRT C API), the matmul and convolution FLOPs of its jaxpr.
  Custom calls (Pallas, cuDNN kernels) count nothing either way. XLA counts a loop's body once (the trainer counts a
  step without gradient accumulation), and a rematerialised forward pass twice."""
  try:
    flops = _cost_flops(jitted.lower(*args).cost_analysis())
    if flops:
      return flops
  except Exception:  # NotImplementedError or a runtime error, by version, on backends without the analysis
    pass
  try:
    return jaxpr_flops(jitted.trace(*args).jaxpr) or None
  except Exception:  # MFU is then just not reported.
    return None


def mfu(flops_per_step: float | None, step_seconds: float, peak: float | None, num_devices: int) -> float | None:
  if not flops_per_step or not peak or step_seconds <= 0:
    return None
  return flops_per_step / step_seconds / (peak * num_devices)
