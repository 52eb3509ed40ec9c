"""Keeps freed host memory for reuse, so XLA:CPU's per-step temporary buffer is not zero-filled afresh each step.

XLA:CPU allocates a step's temporaries as one buffer per call (1 GB for ViT-S/16 at batch 8) from one of its worker
threads. glibc serves such a block with `mmap` and returns it with `munmap`, so every step the kernel faults in and
zero-fills about 265,000 fresh pages: 0.3-0.5 s of system time on a 4 s step on two cores. With one malloc arena, no
`mmap` and trimming off, the block comes from the heap and stays there for the next step. Trimming must be off, not
merely high: the largest threshold `mallopt` takes is 2 GB, and MaxViT-T's 4.5 GB of temporaries at batch 8 went back
to the kernel after every step under it (1.1 million faults, 5 s of system time per step).

The setting must come before any other thread starts (numpy's BLAS pool starts one on import): a thread that has
allocated keeps its own arena, later threads may be handed it, and an arena other than the main one serves blocks over
64 MB with `mmap` whatever `M_MMAP_MAX` says. This module imports nothing heavy, so scripts call it first.
"""
import ctypes
import importlib.metadata
import importlib.util
import logging
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)


def _accelerator_expected() -> bool:
  """Whether JAX will pick a GPU or TPU: then the step's temporaries live on the device, and tf.data's threads are
  better served by glibc's per-thread arenas."""
  if os.environ.get('JAX_PLATFORMS'):
    return os.environ['JAX_PLATFORMS'].split(',')[0] != 'cpu'
  plugins = importlib.metadata.entry_points(group='jax_plugins')
  return bool(plugins) or any(importlib.util.find_spec(name) for name in ('jax_plugins', 'libtpu'))


def _arena_count(libc: ctypes.CDLL) -> int:
  """How many malloc arenas the process has, from glibc's `malloc_info` report (one `<heap>` element each)."""
  buf, size = ctypes.c_char_p(), ctypes.c_size_t()
  libc.open_memstream.restype = ctypes.c_void_p
  stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
  libc.malloc_info(0, ctypes.c_void_p(stream))
  libc.fclose(ctypes.c_void_p(stream))
  report = ctypes.string_at(buf, size.value)
  libc.free(buf)
  return report.count(b'<heap nr=')


def reuse_freed_memory() -> bool:
  """On a CPU-only Linux (glibc) host, makes malloc keep freed memory for reuse; returns whether it did.

  Call it first thing in a process, before importing numpy, JAX or torch: once another thread has allocated, the
  setting cannot be relied on, so it logs a warning and changes nothing. Elsewhere (macOS, musl, a GPU or TPU host) it
  changes nothing and returns False.
  """
  if _accelerator_expected():
    return False
  libc = ctypes.CDLL(None)
  if not hasattr(libc, 'malloc_info'):  # not glibc
    return False
  if (arenas := _arena_count(libc)) > 1:
    logging.getLogger(__name__).warning(
        'reuse_freed_memory(): other threads have already allocated (%d malloc arenas), so malloc is left as it is. '
        'Call it before importing numpy, JAX or torch.', arenas)
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))  # -1: never trim (mallopt(3))
