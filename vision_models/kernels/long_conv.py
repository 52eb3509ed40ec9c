"""Long depthwise convolutions as FFT convolutions whose DFTs are real matrix products, fused in one Pallas kernel.

`long_conv(u [batch, length, channels], k [kernel_length, channels])` is y_t = Σ_s k_s·u_{t−s} (causal) or
y_t = Σ_s k_s·u_{t−s+K//2} (centred). Both are windows of the linear convolution, so the signal and the kernel are
zero-padded to an FFT size N ≥ max(shift + L, L + K − 1 − shift) (no circular wrap-around reaches the window) and
the kernel computes, per (batch, channel),
  ifft(fft(u) · fft(k))
with every DFT written Monarch / Cooley–Tukey style (FlashFFTConv): the padded signal is a [N1, N2, N3] array,
  stage 1  radix-N1 butterfly over the slow index on the vector unit, then twiddles W_N^{m·k1} (only when N1 > 1),
  stage 2  F_{N2} @ slab on the matrix unit, twiddles W_{N2·N3}^{n3·k2},
  stage 3  slab @ F_{N3} on the matrix unit.
The frequencies come out in a permuted order, which does not matter: the pointwise product sees both spectra in the
same order, and the inverse runs the conjugate stages backwards (taking only the real part in its last stage).
Pallas has no complex dtype or FFT on TPU, so real and imaginary parts are separate float32 planes and every matmul
asks for float32 precision. N is a power of two: N2·N3 up to 256·256 (two matmul stages), then N1 up to 16.

The backward pass reuses the same kernel: du is the convolution of dy with the flipped kernel and dk the per-example
convolution of u with the time-reversed dy (summed over the batch), each a slice of a linear convolution.

`long_conv2d` is the 2-D (image) variant: separable DFTs along H (left matmul) and W (right matmul), no twiddles.
The XLA references beside them are direct convolution (`lax.conv_general_dilated` with `feature_group_count`) and
`jnp.fft`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from vision_models.errors import ConfigError
from vision_models.kernels import _conv_common as cc

MIN_STAGE = 16  # smallest dense DFT (Triton dots need 16 on each side)
MAX_STAGE = 256  # largest dense DFT per matmul stage of the 1-D transform
MAX_RADIX = 16  # largest outer radix (vector unit) of the three-stage factorisation
MAX_FFT = MAX_RADIX * MAX_STAGE ** 2  # 2**20: causal lengths up to 512K
MAX_STAGE_2D = 512  # largest dense DFT per image axis
BLOCK_ELEMS = 1 << 16  # padded elements per grid step (batch block x channel block x N), a VMEM budget
_F32 = jnp.float32


def _shift(kernel_length: int, causal: bool) -> int:
  return 0 if causal else kernel_length // 2


def fft_size(needed: int, minimum: int = MIN_STAGE ** 2) -> int:
  return max(cc.next_pow2(needed), minimum)


def fft_factors(n: int) -> tuple[int, int, int]:
  """(N1, N2, N3), N = N1·N2·N3: N1 the vector-unit radix (1 for two stages), N2 x N3 the matmul stages."""
  m = n.bit_length() - 1
  if m <= 16:
    return 1, 1 << (m // 2), 1 << (m - m // 2)
  return 1 << (m - 16), MAX_STAGE, MAX_STAGE


def _dft_matrix(n: int) -> tuple[np.ndarray, np.ndarray]:
  j = np.arange(n)
  return _unit(np.outer(j, j) % n, n)


def _unit(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """exp(−2πi·index/n) as float32 (re, im); `index` is reduced mod n first so that float64 keeps full accuracy."""
  angle = -2 * np.pi * (index % n) / n
  return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def _constants_1d(n1: int, n2: int, n3: int) -> list[np.ndarray]:
  n = n1 * n2 * n3
  consts = [*_dft_matrix(n2), *_dft_matrix(n3), *_unit(np.outer(np.arange(n2), np.arange(n3)), n2 * n3)]
  if n1 > 1:
    t1 = _unit(np.outer(np.arange(n1), np.arange(n2 * n3)), n)
    consts += [t.reshape(n1, n2, n3) for t in t1]
  return consts


def _dot(a, b):
  return jnp.dot(a, b, precision=lax.Precision.HIGHEST, preferred_element_type=_F32)


def _conv_kernel(a_ref, b_ref, *refs, n1: int, twiddle: bool, shared: bool):
  """One grid step: for each channel and example of the block, ifft(fft(a) · fft(b)) on [N1, N2, N3] slabs."""
  o_ref = refs[-1]
  f2r, f2i, f3r, f3i = (r[...] for r in refs[:4])
  t23 = (refs[4][...], refs[5][...]) if twiddle else None
  t1 = refs[6:8] if n1 > 1 else None
  scale = 1.0 / (n1 * f2r.shape[0] * f3r.shape[0])
  # Radix-N1 coefficients W_{N1}^{j·k} as Python floats: the outer stage is a handful of scaled slab additions.
  radix = [[(np.cos(2 * np.pi * j * k / n1), -np.sin(2 * np.pi * j * k / n1)) for k in range(n1)]
           for j in range(n1)]

  def weighted_sum(coeffs, slabs):
    out = None
    for c, s in zip(coeffs, slabs):
      if abs(c) > 1e-12:
        out = c * s if out is None else out + c * s
    return jnp.zeros_like(slabs[0]) if out is None else out

  def forward(ref, bi, c):
    """DFT of a real signal stored as N1 slabs: returns lists of (re, im) slabs in the permuted frequency order."""
    x = [ref[bi, c, j].astype(_F32) for j in range(n1)]
    if n1 == 1:
      re, im = [_dot(f2r, x[0])], [_dot(f2i, x[0])]
    else:
      re, im = [], []
      for k in range(n1):
        ar = weighted_sum([radix[j][k][0] for j in range(n1)], x)
        ai = weighted_sum([radix[j][k][1] for j in range(n1)], x)
        tr, ti = t1[0][k], t1[1][k]
        ar, ai = ar * tr - ai * ti, ar * ti + ai * tr
        re.append(_dot(f2r, ar) - _dot(f2i, ai))
        im.append(_dot(f2r, ai) + _dot(f2i, ar))
    if twiddle:
      re, im = [r * t23[0] - i * t23[1] for r, i in zip(re, im)], [r * t23[1] + i * t23[0] for r, i in zip(re, im)]
    return ([_dot(r, f3r) - _dot(i, f3i) for r, i in zip(re, im)],
            [_dot(r, f3i) + _dot(i, f3r) for r, i in zip(re, im)])

  def inverse(zr, zi):
    """The adjoint stages in reverse order (conjugate matrices), keeping only the real part at the end."""
    re = [_dot(r, f3r) + _dot(i, f3i) for r, i in zip(zr, zi)]
    im = [_dot(i, f3r) - _dot(r, f3i) for r, i in zip(zr, zi)]
    if twiddle:
      re, im = [r * t23[0] + i * t23[1] for r, i in zip(re, im)], [i * t23[0] - r * t23[1] for r, i in zip(re, im)]
    if n1 == 1:
      return [_dot(f2r, re[0]) + _dot(f2i, im[0])]
    ar, ai = [], []
    for k in range(n1):
      r, i = _dot(f2r, re[k]) + _dot(f2i, im[k]), _dot(f2r, im[k]) - _dot(f2i, re[k])
      tr, ti = t1[0][k], t1[1][k]
      ar.append(r * tr + i * ti)
      ai.append(i * tr - r * ti)
    return [weighted_sum([radix[j][k][0] for k in range(n1)] + [radix[j][k][1] for k in range(n1)], ar + ai)
            for j in range(n1)]

  def spectrum(bi, c):
    kr, ki = forward(b_ref, bi, c)
    return [r * scale for r in kr], [i * scale for i in ki]

  block_b, block_c = a_ref.shape[:2]

  def channel(c, carry):
    shared_spectrum = spectrum(0, c) if shared else None

    def example(bi, carry):
      kr, ki = shared_spectrum if shared else spectrum(bi, c)
      ur, ui = forward(a_ref, bi, c)
      y = inverse([a * b - p * q for a, p, b, q in zip(ur, ui, kr, ki)],
                  [a * q + p * b for a, p, b, q in zip(ur, ui, kr, ki)])
      for j in range(n1):
        o_ref[bi, c, j] = y[j].astype(o_ref.dtype)
      return carry

    return lax.fori_loop(0, block_b, example, carry)

  lax.fori_loop(0, block_c, channel, 0)


def transform_flops(n1: int, n2: int, n3: int, twiddle: bool = True) -> tuple[int, int]:
  """FLOPs of one forward DFT of a real signal and of one inverse DFT to a real signal (they are equal)."""
  n = n1 * n2 * n3
  left, right = 2 * n2 * n, 2 * n3 * n  # one real matmul stage over the whole signal
  flops = (2 if n1 == 1 else 4) * left + 4 * right + (6 * n if twiddle else 0)
  if n1 > 1:
    flops += 4 * n1 * n + 6 * n  # the radix butterfly and its twiddles
  return flops, flops


def _blocks(size: int, per_item: int, budget: int) -> int:
  """Largest power of two dividing `size` with block·per_item ≤ budget (at least 1)."""
  block = 1
  while size % (block * 2) == 0 and block * 2 * per_item <= budget:
    block *= 2
  return block


def _call(a, b, *consts, n1: int, twiddle: bool, out_dtype, platform: str):
  batch, channels, *slab = a.shape
  slab = tuple(slab)
  n = int(np.prod(slab))
  shared = b.shape[0] == 1
  block_c = _blocks(channels, n, BLOCK_ELEMS)
  block_b = _blocks(batch, block_c * n, BLOCK_ELEMS)
  zeros = (0,) * len(slab)
  a_spec = pl.BlockSpec((block_b, block_c) + slab, lambda i, j: (i, j) + zeros)
  b_spec = pl.BlockSpec((1 if shared else block_b, block_c) + slab, lambda i, j: (0 if shared else i, j) + zeros)
  const_specs = [pl.BlockSpec(c.shape, functools.partial(lambda nd, i, j: (0,) * nd, c.ndim)) for c in consts]
  fwd, inv = transform_flops(n1, slab[1], slab[2], twiddle)
  steps = batch * channels
  cost = pl.CostEstimate(flops=int(steps * (fwd + inv + 6 * n) + (steps // block_b if shared else steps) * fwd),
                         transcendentals=0, bytes_accessed=int(a.nbytes + b.nbytes + steps * n * 4 +
                                                                sum(c.nbytes for c in consts)))
  kernel = functools.partial(_conv_kernel, n1=n1, twiddle=twiddle, shared=shared)
  return pl.pallas_call(
      kernel, out_shape=cc.out_struct(a.shape, out_dtype, a, b), grid=(batch // block_b, channels // block_c),
      in_specs=[a_spec, b_spec] + const_specs, out_specs=a_spec, cost_estimate=cost,
      compiler_params=cc.compiler_params(platform, ('parallel', 'parallel')),
      interpret=platform == cc.INTERPRET, name='long_conv')(a, b, *consts)


def _conv1d(a, b, offset: int, out_len: int, *, interpret: bool, out_dtype):
  """Per channel, (a * b)[offset : offset + out_len] of the linear convolution; a [B, La, C], b [1 or B, Kb, C]."""
  needed = max(offset + out_len, a.shape[1] + b.shape[1] - 1 - offset)
  n = fft_size(needed)
  if n > MAX_FFT:
    raise ConfigError(f'long_conv: FFT size {n} exceeds the supported {MAX_FFT} (length + kernel_length too long)')
  n1, n2, n3 = fft_factors(n)

  def to_slabs(x):
    x = jnp.swapaxes(x, 1, 2)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, n - x.shape[2])))
    return x.reshape(x.shape[:2] + (n1, n2, n3))

  consts = [jnp.asarray(c) for c in _constants_1d(n1, n2, n3)]
  call = functools.partial(_call, n1=n1, twiddle=True, out_dtype=out_dtype)
  y = cc.per_platform(call, to_slabs(a), to_slabs(b), *consts, interpret=interpret)
  return jnp.swapaxes(y.reshape(y.shape[:2] + (n,))[:, :, offset:offset + out_len], 1, 2)


def _conv2d(a, b, offset: tuple[int, int], out_hw: tuple[int, int], *, interpret: bool, out_dtype):
  """The 2-D analogue of `_conv1d`: a [B, H, W, C], b [1 or B, Kh, Kw, C]; one DFT matmul per image axis."""
  sizes = []
  for axis in (0, 1):
    needed = max(offset[axis] + out_hw[axis], a.shape[1 + axis] + b.shape[1 + axis] - 1 - offset[axis])
    sizes.append(fft_size(needed, MIN_STAGE))
  if max(sizes) > MAX_STAGE_2D:
    raise ConfigError(f'long_conv2d: FFT size {sizes} exceeds {MAX_STAGE_2D} per axis (image or kernel too large)')
  nh, nw = sizes

  def to_slabs(x):
    x = jnp.transpose(x, (0, 3, 1, 2))
    x = jnp.pad(x, ((0, 0), (0, 0), (0, nh - x.shape[2]), (0, nw - x.shape[3])))
    return x[:, :, None]

  consts = [jnp.asarray(c) for c in (*_dft_matrix(nh), *_dft_matrix(nw))]
  call = functools.partial(_call, n1=1, twiddle=False, out_dtype=out_dtype)
  y = cc.per_platform(call, to_slabs(a), to_slabs(b), *consts, interpret=interpret)
  y = y[:, :, 0, offset[0]:offset[0] + out_hw[0], offset[1]:offset[1] + out_hw[1]]
  return jnp.transpose(y, (0, 2, 3, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _long_conv(u, k, causal, interpret):
  return _conv1d(u, k[None], _shift(k.shape[0], causal), u.shape[1], interpret=interpret, out_dtype=u.dtype)


def _long_conv_fwd(u, k, causal, interpret):
  return _long_conv(u, k, causal, interpret), (u, k)


def _long_conv_bwd(causal, interpret, residuals, dy):
  u, k = residuals
  length, klen, shift = u.shape[1], k.shape[0], _shift(k.shape[0], causal)
  du = _conv1d(dy, k[None, ::-1], klen - 1 - shift, length, interpret=interpret, out_dtype=u.dtype)
  dk = _conv1d(u, dy[:, ::-1], length - klen + shift, klen, interpret=interpret, out_dtype=_F32)
  return cc.reduce_to(du, u), cc.reduce_to(dk.sum(0)[::-1].astype(k.dtype), k)


_long_conv.defvjp(_long_conv_fwd, _long_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _long_conv2d(x, k, interpret):
  shift = (k.shape[0] // 2, k.shape[1] // 2)
  return _conv2d(x, k[None], shift, x.shape[1:3], interpret=interpret, out_dtype=x.dtype)


def _long_conv2d_fwd(x, k, interpret):
  return _long_conv2d(x, k, interpret), (x, k)


def _long_conv2d_bwd(interpret, residuals, dy):
  x, k = residuals
  (h, w), (kh, kw) = x.shape[1:3], k.shape[:2]
  dx = _conv2d(dy, k[None, ::-1, ::-1], (kh - 1 - kh // 2, kw - 1 - kw // 2), (h, w), interpret=interpret,
               out_dtype=x.dtype)
  dk = _conv2d(x, dy[:, ::-1, ::-1], (h - kh + kh // 2, w - kw + kw // 2), (kh, kw), interpret=interpret,
               out_dtype=_F32)
  return cc.reduce_to(dx, x), cc.reduce_to(dk.sum(0)[::-1, ::-1].astype(k.dtype), k)


_long_conv2d.defvjp(_long_conv2d_fwd, _long_conv2d_bwd)


def _check(name: str, lengths, kernel_lengths, causal: bool, u, k):
  if u.ndim != len(lengths) + 2 or k.ndim != len(lengths) + 1 or k.shape[-1] != u.shape[-1]:
    raise ConfigError(f'{name}: expected u [batch, {", ".join(["length"] * len(lengths))}, channels] and k '
                      f'[kernel_length..., channels] with equal channels, got {u.shape} and {k.shape}')
  for length, klen in zip(lengths, kernel_lengths):
    limit = length if causal else 2 * length - 1
    if not 1 <= klen <= limit:
      raise ConfigError(f'{name}: kernel length {klen} must be in [1, {limit}] for length {length} '
                        f'({"causal" if causal else "centred"}); crop the kernel')


def long_conv(u: jax.Array, k: jax.Array, *, causal: bool = True, interpret: bool | None = None) -> jax.Array:
  """Depthwise long convolution of u [batch, length, channels] with k [kernel_length, channels].

  causal: y_t = Σ_s k_s·u_{t−s} (kernel_length ≤ length); centred: y_t = Σ_s k_s·u_{t−s+K//2}
  (kernel_length ≤ 2·length − 1, so a 2L−1 kernel mixes every pair of positions). Pallas kernel, differentiable;
  `interpret=None` runs it in interpret mode on the CPU. Returns u's dtype; k may be float32 while u is bfloat16.
  """
  _check('long_conv', u.shape[1:2], k.shape[:1], causal, u, k)
  return _long_conv(u, k, causal, cc.resolve_interpret(interpret))


def long_conv2d(x: jax.Array, k: jax.Array, *, interpret: bool | None = None) -> jax.Array:
  """Centred ('same') depthwise 2-D convolution of x [batch, h, w, channels] with k [kh, kw, channels].

  y[i, j] = Σ_{p,q} k[p, q]·x[i − p + kh//2, j − q + kw//2] (kh ≤ 2h − 1, kw ≤ 2w − 1): a global filter when the
  kernel covers the image. Pallas kernel (separable DFT matmuls along H and W), differentiable.
  """
  _check('long_conv2d', x.shape[1:3], k.shape[:2], False, x, k)
  return _long_conv2d(x, k, cc.resolve_interpret(interpret))


def long_conv_direct(u: jax.Array, k: jax.Array, *, causal: bool = True) -> jax.Array:
  """XLA reference: the same convolution by `lax.conv_general_dilated` (O(L·K) per channel)."""
  klen, shift = k.shape[0], _shift(k.shape[0], causal)
  y = lax.conv_general_dilated(u.astype(_F32), k[::-1, None, :].astype(_F32), (1,), [(klen - 1 - shift, shift)],
                               dimension_numbers=('NWC', 'WIO', 'NWC'), feature_group_count=u.shape[-1],
                               precision=lax.Precision.HIGHEST)
  return y.astype(u.dtype)


def long_conv_fft(u: jax.Array, k: jax.Array, *, causal: bool = True) -> jax.Array:
  """XLA reference: the same convolution by `jnp.fft` (zero-padded real FFTs, O(L log L) per channel)."""
  length, klen, shift = u.shape[1], k.shape[0], _shift(k.shape[0], causal)
  n = cc.next_pow2(length + klen - 1)
  spec = jnp.fft.rfft(u.astype(_F32), n, axis=1) * jnp.fft.rfft(k.astype(_F32), n, axis=0)
  return jnp.fft.irfft(spec, n, axis=1)[:, shift:shift + length].astype(u.dtype)


def long_conv2d_direct(x: jax.Array, k: jax.Array) -> jax.Array:
  """XLA reference for `long_conv2d` by `lax.conv_general_dilated`."""
  (kh, kw) = k.shape[:2]
  y = lax.conv_general_dilated(x.astype(_F32), k[::-1, ::-1, None, :].astype(_F32), (1, 1),
                               [(kh - 1 - kh // 2, kh // 2), (kw - 1 - kw // 2, kw // 2)],
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1],
                               precision=lax.Precision.HIGHEST)
  return y.astype(x.dtype)


def long_conv2d_fft(x: jax.Array, k: jax.Array) -> jax.Array:
  """XLA reference for `long_conv2d` by `jnp.fft.rfft2`."""
  (h, w), (kh, kw) = x.shape[1:3], k.shape[:2]
  s = (cc.next_pow2(h + kh - 1), cc.next_pow2(w + kw - 1))
  spec = jnp.fft.rfft2(x.astype(_F32), s, axes=(1, 2)) * jnp.fft.rfft2(k.astype(_F32), s, axes=(0, 1))
  y = jnp.fft.irfft2(spec, s, axes=(1, 2))
  return y[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w].astype(x.dtype)
