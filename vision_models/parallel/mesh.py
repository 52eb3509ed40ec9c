"""The device mesh from the config: named axes `data`, `fsdp`, `tensor`, one of them may be -1 (the rest)."""
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from vision_models.errors import ConfigError

AXES = ('data', 'fsdp', 'tensor')  # Outer to inner: tensor parallelism wants the fastest links.
BATCH_AXES = ('data', 'fsdp')  # The batch is split over both: FSDP is data parallelism with sharded weights.


def mesh_shape(axes: Mapping[str, int], device_count: int | None = None) -> dict[str, int]:
  """Resolves the sizes in `axes` (at most one -1) against the device count, with a clear error."""
  n = jax.device_count() if device_count is None else device_count
  unknown = set(axes) - set(AXES)
  if unknown:
    raise ConfigError(f'config.mesh has unknown axes {sorted(unknown)}; the axes are {", ".join(AXES)}')
  sizes = {a: int(axes.get(a, 1)) for a in AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ConfigError(f'config.mesh {sizes}: sizes must be positive, with at most one -1 (= the remaining devices)')
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if fixed > n or n % fixed:
    raise ConfigError(f'config.mesh {sizes} needs {fixed} devices (or a multiple with -1) but {n} are available; '
                      f'shrink the mesh so its sizes multiply to a divisor of {n}')
  if free:
    sizes[free[0]] = n // fixed
  elif fixed != n:
    raise ConfigError(f'config.mesh {sizes} uses {fixed} of {n} devices; set one axis to -1 to use them all')
  return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `Mesh` over all devices with axes `data`, `fsdp`, `tensor` (sizes from `mesh_shape`)."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = mesh_shape(axes, len(devices))
  shape = tuple(sizes[a] for a in AXES)
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
