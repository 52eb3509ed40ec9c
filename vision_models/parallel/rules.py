"""Logical axis names → mesh axes (MaxText-style), and the shardings they give parameters and batches.

One table serves every layout: a mesh axis of size 1 shards nothing, so the same rules give pure data parallelism
(mesh data=-1), FSDP (fsdp>1: parameters and optimizer state split along `embed`), Megatron tensor parallelism
(tensor>1: heads and MLP hidden units split) and their combinations.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vision_models.errors import ConfigError
from vision_models.parallel.mesh import BATCH_AXES

Rules = Sequence[tuple[str, Any]]

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # Activations.
    ('batch', BATCH_AXES),
    ('length', None),
    ('act_embed', None),
    ('act_mlp', 'tensor'),
    ('act_heads', 'tensor'),
    # Parameters.
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('conv_in', None),
    ('conv_out', 'tensor'),
    ('classes', None),
)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh, min_size: int) -> P:
  """Drops mesh axes that do not divide their dimension; replicates tensors smaller than `min_size` elements."""
  if int(np.prod(shape)) < min_size:
    return P()
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = tuple(a for a in names if mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in kept]))
    out.append(None if not kept or dim % size else (kept[0] if len(kept) == 1 else kept))
  return P(*out)


def check_rules(rules: Rules, mesh: Mesh) -> None:
  """Raises ConfigError for a rule naming a mesh axis the mesh does not have."""
  for name, axes in rules:
    unknown = [a for a in ((axes,) if isinstance(axes, str) else tuple(axes or ())) if a not in mesh.shape]
    if unknown:
      raise ConfigError(f'sharding rule {(name, axes)!r} names mesh axis {unknown[0]!r}, which the mesh does not have '
                        f'(its axes: {", ".join(mesh.axis_names)}); use one of those or None (config.sharding_rules)')


def shardings(abstract_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, min_size: int = 2 ** 14) -> Any:
  """NamedShardings for a (possibly boxed) pytree of abstract arrays from `nn.get_partition_spec` and `rules`.

  Leaves without logical names (optimizer counters, unboxed extras) are replicated.
  """
  check_rules(rules, mesh)
  logical = nn.get_partition_spec(abstract_tree)
  unboxed = nn.unbox(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh, min_size)),
                      mesh_specs, unboxed, is_leaf=lambda s: isinstance(s, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The batch dimension split over the data-parallel axes, everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host numpy batches → global `jax.Array`s split over the data-parallel axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def under_mesh(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
  """Calls `fn` with `mesh` as the context mesh, which activation sharding constraints need when traced."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  def lower(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn.lower(*args, **kwargs)

  def trace(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn.trace(*args, **kwargs)

  wrapped.lower, wrapped.trace = lower, trace  # For cost analysis (FLOPs per step) of the jitted function.
  return wrapped


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
  """Bytes each device holds of a pytree of arrays (to check that sharding really shrinks memory)."""
  total: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      total[shard.device] = total.get(shard.device, 0) + shard.data.nbytes
  return total
