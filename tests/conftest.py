"""Shared fixtures. Tests run on the CPU; multi-device tests set XLA_FLAGS in a subprocess or via the 8-device
session below (conftest sets it before JAX is imported)."""
import os

# 8 CPU devices for every test process: sharding tests need them, single-device code is unaffected.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
