"""Keeps freed host memory for reuse, so XLA:CPU's per-step temporary buffer is not zero-filled afresh each step.

XLA:CPU allocates a step's temporaries as one buffer per call (1 GB for ViT-S/16 at batch 8) from one of its worker
threads. glibc serves such a block with `mmap` and returns it with `munmap`, so every step the kernel faults in and
zero-fills about 265,000 fresh pages: 0.3-0.5 s of system time on a 4 s step on two cores. With one malloc arena, no
`mmap` and a high trim threshold, the block comes from the heap and stays there for the next step.
"""
import ctypes
import importlib.metadata
import importlib.util

import jax

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)


def _accelerator_expected() -> bool:
  """Whether JAX will pick a GPU or TPU: then the step's temporaries live on the device, and tf.data's threads are
  better served by glibc's per-thread arenas."""
  if jax.config.jax_platforms:
    return jax.config.jax_platforms.split(',')[0] != 'cpu'
  plugins = importlib.metadata.entry_points(group='jax_plugins')
  return bool(plugins) or any(importlib.util.find_spec(name) for name in ('jax_plugins', 'libtpu'))


def reuse_freed_memory() -> bool:
  """On a CPU-only Linux (glibc) host, makes malloc keep freed memory for reuse; returns whether it did.

  Call it first thing in a process, before JAX's backend starts: threads that have already allocated keep their own
  arena. Elsewhere (macOS, musl, a GPU or TPU host) it changes nothing and returns False.
  """
  if _accelerator_expected():
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  return all(mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
