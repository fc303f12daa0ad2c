"""Scratch: alternative formulations to try (patched into alexnet_jax.model)."""
import functools
import jax, jax.numpy as jnp
from jax import lax
import numpy as np
from alexnet_jax import model as M


def lrn_shifts(x):
  sq = jnp.square(x.astype(jnp.float32))
  half = M.LRN_N // 2
  c = x.shape[-1]
  p = jnp.pad(sq, [(0, 0)] * (x.ndim - 1) + [(half, half)])
  ws = sum(lax.slice_in_dim(p, d, d + c, axis=x.ndim - 1) for d in range(M.LRN_N))
  return (x * (M.LRN_K + M.LRN_ALPHA * ws) ** -M.LRN_BETA).astype(x.dtype)


def lrn_banded(x):
  sq = jnp.square(x.astype(jnp.float32))
  c = x.shape[-1]
  i = np.arange(c)
  band = (np.abs(i[:, None] - i[None, :]) <= M.LRN_N // 2).astype(np.float32)
  ws = jnp.dot(sq, band, precision=lax.Precision.HIGHEST)
  return (x * (M.LRN_K + M.LRN_ALPHA * ws) ** -M.LRN_BETA).astype(x.dtype)


def pool_slices(x, config):
  window, stride = M.pool_window(config)
  n, h, w, c = x.shape
  oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
  parts = [lax.slice(x, (0, dy, dx, 0), (n, dy + stride * (oh - 1) + 1, dx + stride * (ow - 1) + 1, c),
                     (1, stride, stride, 1)) for dy in range(window) for dx in range(window)]
  return functools.reduce(jnp.maximum, parts)


_conv = lax.conv_general_dilated


class S2DLax:
  """lax with conv1 (stride 4) as space-to-depth + stride-1 conv."""
  def __getattr__(self, name):
    return getattr(lax, name)

  @staticmethod
  def conv_general_dilated(x, w, strides, padding, dimension_numbers=None):
    s = strides[0]
    if s == 1:
      return _conv(x, w, strides, padding, dimension_numbers=dimension_numbers)
    k = w.shape[0]
    n, size, _, cin = x.shape
    out = (size + padding[0][0] + padding[0][1] - k) // s + 1
    blocks = out + -(-k // s) - 1
    kb = -(-k // s)
    total = blocks * s
    x = jnp.pad(x, ((0, 0), (padding[0][0], total - size - padding[0][0]),
                    (padding[1][0], total - size - padding[1][0]), (0, 0)))
    x = x.reshape(n, blocks, s, blocks, s, cin).transpose(0, 1, 3, 2, 4, 5).reshape(n, blocks, blocks, s * s * cin)
    w = jnp.pad(w, ((0, kb * s - k), (0, kb * s - k), (0, 0), (0, 0)))
    cout = w.shape[-1]
    w = w.reshape(kb, s, kb, s, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(kb, kb, s * s * cin, cout)
    return _conv(x, w, (1, 1), 'VALID', dimension_numbers=dimension_numbers)


def apply(patches):
  for p in patches:
    if p == 'lrn_shifts':
      M.local_response_norm = lrn_shifts
    elif p == 'lrn_banded':
      M.local_response_norm = lrn_banded
    elif p == 'pool_slices':
      M.max_pool = pool_slices
    elif p == 's2d':
      M.lax = S2DLax()
    elif p:
      raise ValueError(p)
