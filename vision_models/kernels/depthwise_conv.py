"""Large-kernel depthwise 2-D convolution (RepLKNet / UniRepLKNet sizes, up to 31x31) in Pallas, forward and backward.

`depthwise_conv2d(x [b, h, w, c], w [kh, kw, c])` is `lax.conv_general_dilated(..., padding='SAME',
feature_group_count=c)`: a cross-correlation, y[i, j] = Σ_{p,q} w[p, q]·x[i + p − (kh−1)//2, j + q − (kw−1)//2].

Layout: channels on the 128 lanes, W on the sublanes, H leading. The grid is (batch, channel blocks, row blocks); each
step reads an overlapping window of `block_h + kh − 1` padded input rows (element-indexed BlockSpec, so the halo
costs no extra copy) and accumulates the kh·kw taps as shifted multiply-adds on the vector unit: a depthwise
convolution reduces over only kh·kw taps per output, which would leave a matrix unit idle. Kernel rows are a
`fori_loop`, kernel columns unrolled.

Backward (custom VJP): dx is the same kernel run on dy with the flipped filter (and mirrored padding); dw is a second
kernel that correlates the padded input with dy, writing one partial [kh, kw, c] sum per (example, row block) that
XLA adds up (no cross-step accumulation, so every grid axis stays parallel on TPU and race-free on GPU).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from vision_models.errors import ConfigError
from vision_models.kernels import _conv_common as cc

WINDOW_BYTES = 3 << 20  # TPU: input window per grid step; double-buffered, a 31x31 step stays near 11 MiB of VMEM
GPU_TILE_ELEMS = 1 << 14  # GPU (Triton): elements of the [rows, w, channels] accumulator held in registers
_F32 = jnp.float32


def same_padding(kernel: int) -> int:
  """Low-side padding of lax's 'SAME' for stride 1 (the extra row of an even kernel goes to the high side)."""
  return (kernel - 1) // 2


def _layout(h: int, w: int, c: int, kh: int, kw: int, itemsize: int, platform: str) -> dict[str, int]:
  """Block sizes. TPU: lanes of 128 channels, sizes in multiples of 8; GPU: every block a power of two (Triton)."""
  gpu = platform == cc.GPU
  align = cc.next_pow2 if gpu else (lambda n: cc.round_up(n, 8))
  cb = min(32 if gpu else 128, max(8, cc.next_pow2(c)))  # 8: tiny lane blocks compile slowly in interpret mode
  wo = align(w)
  wi = align(wo + kw - 1)
  if gpu:
    hb = 1
    while hb < h and 2 * hb * wo * cb <= GPU_TILE_ELEMS:
      hb *= 2
  else:
    hb = 8
    while hb < h and (hb + 8 + kh - 1) * wi * cb * itemsize <= WINDOW_BYTES:
      hb += 8
    hb = cc.round_up(-(-h // -(-h // hb)), 8)  # Same number of blocks, less padding in the last one.
  nh = -(-h // hb)
  rows = align(hb + kh - 1)
  return dict(cb=cb, cp=cc.round_up(c, cb), wo=wo, wi=wi, hb=hb, nh=nh, rows=rows, total_rows=(nh - 1) * hb + rows)


def _pad_input(x, lay, pads):
  (ph, pw), (_, h, w, c) = pads, x.shape
  return jnp.pad(x, ((0, 0), (ph, lay['total_rows'] - h - ph), (pw, lay['wi'] - w - pw), (0, lay['cp'] - c)))


def _x_spec(lay):
  """Overlapping input windows: element offsets along H (the halo), whole padded W, one channel block."""
  hb, cb = lay['hb'], lay['cb']
  return pl.BlockSpec((None, pl.Element(lay['rows']), pl.Element(lay['wi']), pl.Element(cb)),
                      lambda b, c, i: (b, i * hb, 0, c * cb))


def _forward_kernel(x_ref, w_ref, o_ref, *, kh: int, kw: int):
  hb, wo, cb = o_ref.shape

  def kernel_row(p, acc):
    for q in range(kw):
      tap = w_ref[pl.ds(p, 1), pl.ds(q, 1), :].astype(_F32)
      acc = acc + x_ref[pl.ds(p, hb), pl.ds(q, wo), :].astype(_F32) * tap
    return acc

  o_ref[...] = lax.fori_loop(0, kh, kernel_row, jnp.zeros((hb, wo, cb), _F32)).astype(o_ref.dtype)


def _weight_grad_kernel(x_ref, dy_ref, o_ref, *, kh: int, kw: int):
  dy = dy_ref[...].astype(_F32)
  hb, wo, _ = dy.shape

  def kernel_row(p, carry):
    for q in range(kw):
      prod = x_ref[pl.ds(p, hb), pl.ds(q, wo), :].astype(_F32) * dy
      o_ref[pl.ds(p, 1), pl.ds(q, 1), :] = jnp.sum(prod, axis=(0, 1), keepdims=True)
    return carry

  lax.fori_loop(0, kh, kernel_row, 0)


def _forward(x, w, pads, *, platform: str):
  """Correlation of x with w, padded low by `pads` (high by the rest), same spatial size as x."""
  (n, h, wd, c), (kh, kw) = x.shape, w.shape[:2]
  lay = _layout(h, wd, c, kh, kw, x.dtype.itemsize, platform)
  hb, wo, cb = lay['hb'], lay['wo'], lay['cb']
  grid = (n, lay['cp'] // cb, lay['nh'])
  out = pl.pallas_call(
      functools.partial(_forward_kernel, kh=kh, kw=kw),
      out_shape=cc.out_struct((n, lay['nh'] * hb, wo, lay['cp']), x.dtype, x, w), grid=grid,
      in_specs=[_x_spec(lay), pl.BlockSpec((kh, kw, cb), lambda b, c, i: (0, 0, c))],
      out_specs=pl.BlockSpec((None, hb, wo, cb), lambda b, c, i: (b, i, 0, c)),
      cost_estimate=pl.CostEstimate(flops=2 * n * grid[2] * hb * wo * lay['cp'] * kh * kw, transcendentals=0,
                                    bytes_accessed=2 * x.nbytes + w.nbytes),
      compiler_params=cc.compiler_params(platform, ('parallel',) * 3),
      interpret=platform == cc.INTERPRET, name='depthwise_conv2d',
  )(_pad_input(x, lay, pads), jnp.pad(w, ((0, 0), (0, 0), (0, lay['cp'] - c))))
  return out[:, :h, :wd, :c]


def _weight_grad(x, dy, kernel_hw, pads, *, platform: str):
  """dw[p, q] = Σ_{b,i,j} dy[b, i, j]·x_pad[b, i + p, j + q] in float32."""
  (n, h, wd, c), (kh, kw) = x.shape, kernel_hw
  lay = _layout(h, wd, c, kh, kw, x.dtype.itemsize, platform)
  hb, wo, cb = lay['hb'], lay['wo'], lay['cb']
  grid = (n, lay['cp'] // cb, lay['nh'])
  dy = jnp.pad(dy, ((0, 0), (0, lay['nh'] * hb - h), (0, wo - wd), (0, lay['cp'] - c)))
  partial = pl.pallas_call(
      functools.partial(_weight_grad_kernel, kh=kh, kw=kw),
      out_shape=cc.out_struct((n, lay['nh'], kh, kw, lay['cp']), _F32, x, dy), grid=grid,
      in_specs=[_x_spec(lay), pl.BlockSpec((None, hb, wo, cb), lambda b, c, i: (b, i, 0, c))],
      out_specs=pl.BlockSpec((None, None, kh, kw, cb), lambda b, c, i: (b, i, 0, 0, c)),
      cost_estimate=pl.CostEstimate(flops=2 * n * grid[2] * hb * wo * lay['cp'] * kh * kw, transcendentals=0,
                                    bytes_accessed=x.nbytes + dy.nbytes),
      compiler_params=cc.compiler_params(platform, ('parallel',) * 3),
      interpret=platform == cc.INTERPRET, name='depthwise_conv2d_dw',
  )(_pad_input(x, lay, pads), dy)
  return partial.sum((0, 1))[..., :c]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x, w, interpret):
  pads = (same_padding(w.shape[0]), same_padding(w.shape[1]))
  return cc.per_platform(functools.partial(_forward, pads=pads), x, w, interpret=interpret)


def _depthwise_fwd(x, w, interpret):
  return _depthwise(x, w, interpret), (x, w)


def _depthwise_bwd(interpret, residuals, dy):
  x, w = residuals
  kh, kw = w.shape[:2]
  pads = (same_padding(kh), same_padding(kw))
  mirrored = (kh - 1 - pads[0], kw - 1 - pads[1])
  dx = cc.per_platform(functools.partial(_forward, pads=mirrored), dy, w[::-1, ::-1], interpret=interpret)
  dw = cc.per_platform(functools.partial(_weight_grad, kernel_hw=(kh, kw), pads=pads), x, dy, interpret=interpret)
  return cc.reduce_to(dx, x), cc.reduce_to(dw.astype(w.dtype), w)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv2d(x: jax.Array, w: jax.Array, *, interpret: bool | None = None) -> jax.Array:
  """Depthwise 'same' convolution of NHWC `x` with `w [kh, kw, channels]` (stride 1), a Pallas kernel.

  Differentiable (Pallas backward kernels). `interpret=None` runs in interpret mode on the CPU.
  """
  if x.ndim != 4 or w.ndim != 3 or w.shape[-1] != x.shape[-1]:
    raise ConfigError(f'depthwise_conv2d: expected x [b, h, w, c] and w [kh, kw, c], got {x.shape} and {w.shape}')
  return _depthwise(x, w, cc.resolve_interpret(interpret))


def depthwise_conv2d_reference(x: jax.Array, w: jax.Array) -> jax.Array:
  """XLA reference: `lax.conv_general_dilated` with `feature_group_count` = channels and 'SAME' padding."""
  y = lax.conv_general_dilated(x, w[:, :, None, :].astype(x.dtype), (1, 1), 'SAME',
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1],
                               precision=lax.Precision.HIGHEST, preferred_element_type=_F32)
  return y.astype(x.dtype)
