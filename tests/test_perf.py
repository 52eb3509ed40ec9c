"""FLOPs per step from XLA's cost analysis and the MFU figure the trainer logs."""
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


def test_mfu_and_peaks(monkeypatch):
  assert perf.mfu(1e12, 0.5, 1e12, 4) == pytest.approx(0.5)
  assert perf.mfu(None, 0.5, 1e12, 4) is None and perf.mfu(1e12, 0.5, None, 4) is None
  assert perf.device_peak_flops(123.0) == 123.0
  assert perf.device_peak_flops() is None  # The CPU has no entry: MFU is not logged here without an override.

  class FakeDevice:
    device_kind = 'NVIDIA H100 80GB HBM3'
  monkeypatch.setattr(perf.jax, 'devices', lambda: [FakeDevice()])
  assert perf.device_peak_flops() == 989e12
