"""FLOPs per step from XLA's cost analysis, the MFU figure the trainer logs, and the host memory setting of CPU runs."""
import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from vision_models import parallel
from vision_models.training import perf


def test_step_flops_counts_a_matmul():
  mesh = parallel.make_mesh(dict(data=-1))
  f = parallel.under_mesh(jax.jit(lambda a, b: a @ b), mesh)
  a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
  assert perf.step_flops(f, a, b) == pytest.approx(2 * 64 * 32 * 16, rel=0.05)


def test_jaxpr_flops_agree_with_xla_cost_analysis(monkeypatch):
  # The fallback for GPUs without lowered cost analysis: a conv, a matmul and a scan of matmuls, and its gradient.
  def loss(w, k, x):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = y.reshape(y.shape[0], -1) @ w
    h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w[:16, :16]), None), h[:, :16], None, length=3)
    return h.sum()

  f = parallel.under_mesh(jax.jit(jax.grad(loss)), parallel.make_mesh(dict(data=-1)))
  args = jnp.ones((8 * 8 * 4, 16)), jnp.ones((3, 3, 2, 4)), jnp.ones((2, 8, 8, 2))
  xla = perf.step_flops(f, *args)
  from_jaxpr = perf.jaxpr_flops(f.trace(*args).jaxpr)
  assert from_jaxpr == pytest.approx(xla, rel=0.05)

  def unavailable(*_):
    raise NotImplementedError('Lowered.cost_analysis not implemented on this platform')
  monkeypatch.setattr(jax.stages.Lowered, 'cost_analysis', unavailable)
  assert perf.step_flops(f, *args) == from_jaxpr


def test_mfu_and_peaks(monkeypatch):
  assert perf.mfu(1e12, 0.5, 1e12, 4) == pytest.approx(0.5)
  assert perf.mfu(None, 0.5, 1e12, 4) is None and perf.mfu(1e12, 0.5, None, 4) is None
  assert perf.device_peak_flops(123.0) == 123.0
  assert perf.device_peak_flops() is None  # The CPU has no entry: MFU is not logged here without an override.

  class FakeDevice:
    device_kind = 'NVIDIA H100 80GB HBM3'
  monkeypatch.setattr(perf.jax, 'devices', lambda: [FakeDevice()])
  assert perf.device_peak_flops() == 989e12


_FAULTS_PER_CALL = '''
import resource, sys, threading
from vision_models import host_memory
if sys.argv[1] == 'late':  # a thread that allocates before the setting keeps an arena of its own
  thread = threading.Thread(target=lambda: [bytearray(1 << 20) for _ in range(10)])
  thread.start(), thread.join()
applied = host_memory.reuse_freed_memory() if sys.argv[1] != 'default' else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)).sum())  # two 64 MB temporaries
x = jnp.ones((4096, 4096))
f(x).block_until_ready()
faults = []
for _ in range(8):  # the least: now and then a call still gets fresh pages (heap fragmentation)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, min(faults))
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_reuse_freed_memory_stops_the_per_step_page_faults():
  # Each call of a jitted function with 128 MB of temporaries faults in every page of them under glibc's defaults.
  def run(mode):
    out = subprocess.run([sys.executable, '-c', _FAULTS_PER_CALL, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})
    applied, faults = out.stdout.split()
    return applied == 'True', int(faults), out.stderr

  every_page = 2 * 4096 * 4096 * 4 // resource.getpagesize()
  assert run('default')[:2] == (False, pytest.approx(every_page, rel=0.3))
  assert run('first')[:2] == (True, pytest.approx(0, abs=2000))
  # Called once another thread has run, it cannot be relied on: it says so and leaves malloc alone.
  applied, faults, stderr = run('late')
  assert not applied and 'Call it before importing' in stderr
  assert faults == pytest.approx(every_page, rel=0.3)


_HEAP_AFTER_FREE = '''
import ctypes, sys
from vision_models import host_memory
applied = host_memory.reuse_freed_memory() if sys.argv[1] != 'default' else False
class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                    'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.mallinfo2.restype = ctypes.c_void_p, MallInfo2
block = libc.malloc(ctypes.c_size_t(3 << 30))  # untouched: no pages are faulted in
libc.free(ctypes.c_void_p(block))
print(applied, libc.mallinfo2().arena >= 3 << 30)
'''


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_reuse_freed_memory_keeps_blocks_over_2gb():
  # MaxViT-T's step at batch 8 has 4.5 GB of temporaries: a trim threshold of 2 GB gave them back to the kernel after
  # every step (1.1 million page faults, 5 s of system time on an 8.5 s step).
  def heap_kept(mode):
    out = subprocess.run([sys.executable, '-c', _HEAP_AFTER_FREE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    return out.stdout.split()

  assert heap_kept('default') == ['False', 'False']  # glibc's default: the freed block goes back to the kernel
  assert heap_kept('first') == ['True', 'True']
