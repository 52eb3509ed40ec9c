"""The flash kernels' launches: each kernel's tiles and, on GPUs, its Triton warps and pipelining stages.

The GPU tables were chosen by `python -m benchmarks.attention_tune` on an H100 (benchmarks/RESULTS.md); `launches`
turns a call's request (explicit launches, or block sizes for every kernel) and the backend's table into the three
kernels' `Launch`es.
"""
import dataclasses

import jax

from vision_models.errors import ConfigError

_MAX_BLOCK = 128


@dataclasses.dataclass(frozen=True)
class Launch:
  """One kernel's tiles, and on GPUs its Triton launch: warps per program and software-pipelining stages."""
  block_q: int = _MAX_BLOCK
  block_k: int = _MAX_BLOCK
  num_warps: int = 4
  num_stages: int = 2


KERNELS = ('fwd', 'dkv', 'dq')
# Chosen on an H100 with `python -m benchmarks.attention_tune` (bfloat16, head_dim 64, 4K tokens; RESULTS.md).
GPU_LAUNCH = {'fwd': Launch(64, 128, 4, 2), 'dkv': Launch(64, 64, 4, 3), 'dq': Launch(128, 32, 4, 3)}
# For sequences of at most SHORT_SEQ tokens (seq-major); chosen likewise at ViT-B/16's shape (197 tokens, batch 256,
# 12 heads).
SHORT_SEQ = 256
GPU_LAUNCH_SHORT = {'fwd': Launch(128, 64, 8, 3), 'dkv': Launch(128, 128, 8, 3), 'dq': Launch(128, 64, 4, 3)}


def is_short(q_len: int, k_len: int) -> bool:
  """Whether a GPU call takes `GPU_LAUNCH_SHORT` and the seq-major layout (both chosen at ViT's 197 tokens)."""
  return max(q_len, k_len) <= SHORT_SEQ


def gpu_table(q_len: int, k_len: int) -> dict[str, Launch]:
  return GPU_LAUNCH_SHORT if is_short(q_len, k_len) else GPU_LAUNCH


def next_pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def _block(requested: int | None, length: int, name: str) -> int:
  """A power of two (Triton) that is a multiple of 8 (TPU sublanes); one whole block for short sequences."""
  if requested is not None and (requested < 8 or requested & (requested - 1)):
    raise ConfigError(f'{name}={requested} must be a power of two >= 8 (Triton needs powers of two, TPU multiples '
                      'of 8); use e.g. 64 or 128')
  return min(requested or _MAX_BLOCK, max(16, next_pow2(length)))


def _gpu_default(tile: Launch, row_bytes: int) -> Launch:
  """GPU_LAUNCH was tuned for rows of 128 bytes (bf16, head_dim 64); wider rows (float32, head_dim 128) get smaller
  tiles and at most 2 stages, so the pipelined tiles still fit in shared memory (227 KiB on an H100)."""
  growth = row_bytes // 128
  if growth <= 1:
    return tile
  cap = 64 if growth == 2 else 32
  return dataclasses.replace(tile, block_q=min(tile.block_q, cap), block_k=min(tile.block_k, 64),
                             num_stages=min(tile.num_stages, 2))


def launches(launch: dict[str, Launch] | None, block_q: int | None, block_k: int | None, q_len: int, k_len: int,
             shared_tiles: bool, row_bytes: int) -> dict[str, Launch]:
  """Each kernel's Launch: `launch`, else the backend's default; block_q / block_k override every kernel's tiles."""
  unknown = set(launch or {}) - set(KERNELS)
  if unknown:
    raise ConfigError(f'launch has unknown kernels {sorted(unknown)}; the kernels are {", ".join(KERNELS)}')
  defaults = {}
  if jax.default_backend() == 'gpu':
    defaults = {name: _gpu_default(tile, row_bytes) for name, tile in gpu_table(q_len, k_len).items()}
  out = {}
  for name in KERNELS:
    tile = (launch or {}).get(name) or defaults.get(name) or Launch()
    if shared_tiles and name != 'fwd':  # a bias is laid out in the forward's key blocks
      tile = dataclasses.replace(tile, block_q=out['fwd'].block_q, block_k=out['fwd'].block_k)
    out[name] = dataclasses.replace(tile, block_q=_block(block_q or tile.block_q, q_len, 'block_q'),
                                    block_k=_block(block_k or tile.block_k, k_len, 'block_k'))
  return out
