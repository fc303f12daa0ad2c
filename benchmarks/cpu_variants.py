"""Alternatives patched into alexnet_jax for CPU timing: formulations and compiler options.

Each formulation computes the same function as the model's own (checked in
tests/test_benchmark.py) by another route. benchmarks/cpu_compare.py times them against
the model as it is; docs/PERFORMANCE.md has the results and why none was adopted. They
stay here as the record of what was tried, and to try again on other hardware.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
from jax import lax
import numpy as np

from alexnet_jax import model as model_lib
from alexnet_jax import train


def lrn_shifts(x):
  """LRN whose channel-window sum adds 5 shifted slices (elementwise, fusable)."""
  squared = jnp.square(x.astype(jnp.float32))
  half, channels = model_lib.LRN_N // 2, x.shape[-1]
  padded = jnp.pad(squared, [(0, 0)] * (x.ndim - 1) + [(half, half)])
  window_sum = sum(lax.slice_in_dim(padded, d, d + channels, axis=x.ndim - 1)
                   for d in range(model_lib.LRN_N))
  scale = (model_lib.LRN_K + model_lib.LRN_ALPHA * window_sum) ** -model_lib.LRN_BETA
  return (x * scale).astype(x.dtype)


def lrn_banded(x):
  """LRN whose channel-window sum is a matrix product with a (C, C) band of ones."""
  squared = jnp.square(x.astype(jnp.float32))
  index = np.arange(x.shape[-1])
  band = (np.abs(index[:, None] - index[None, :]) <= model_lib.LRN_N // 2).astype(np.float32)
  window_sum = jnp.dot(squared, band, precision=lax.Precision.HIGHEST)
  scale = (model_lib.LRN_K + model_lib.LRN_ALPHA * window_sum) ** -model_lib.LRN_BETA
  return (x * scale).astype(x.dtype)


def pool_slices(x, config):
  """Max-pool as the maximum of its window's strided slices: no select-and-scatter.

  The gradient splits ties evenly where select-and-scatter picks one; in the net ties
  are zeros after a ReLU, whose gradient is zero either way.
  """
  window, stride = model_lib.pool_window(config)
  batch, height, width, channels = x.shape
  rows, cols = (height - window) // stride + 1, (width - window) // stride + 1
  parts = [lax.slice(x, (0, dy, dx, 0),
                     (batch, dy + stride * (rows - 1) + 1, dx + stride * (cols - 1) + 1,
                      channels), (1, stride, stride, 1))
           for dy in range(window) for dx in range(window)]
  return functools.reduce(jnp.maximum, parts)


def space_to_depth_conv(x, w, strides, padding, dimension_numbers=None):
  """A strided convolution (conv1: 11x11, stride 4) as a stride-1 one on 4x4 blocks.

  The input's s x s blocks become channels (3 -> 48) and the kernel is zero-padded to a
  multiple of s and folded the same way (11x11x3 -> 3x3x48): same sums, denser work.
  """
  stride = strides[0]
  if stride == 1:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dimension_numbers)
  size, kernel, channels = x.shape[1], w.shape[0], x.shape[-1]
  out = (size + sum(padding[0]) - kernel) // stride + 1
  folded = -(-kernel // stride)
  blocks = out + folded - 1
  extra = blocks * stride - size
  x = jnp.pad(x, ((0, 0), (padding[0][0], extra - padding[0][0]),
                  (padding[1][0], extra - padding[1][0]), (0, 0)))
  x = x.reshape(-1, blocks, stride, blocks, stride, channels).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(-1, blocks, blocks, stride * stride * channels)
  w = jnp.pad(w, ((0, folded * stride - kernel), (0, folded * stride - kernel), (0, 0), (0, 0)))
  w = w.reshape(folded, stride, folded, stride, channels, -1).transpose(0, 2, 1, 3, 4, 5)
  w = w.reshape(folded, folded, stride * stride * channels, -1)
  return lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=dimension_numbers)


def nchw_conv(x, w, strides, padding, dimension_numbers=None):
  """The convolution with NCHW activations and OIHW kernels (transposed in and out)."""
  del dimension_numbers  # NHWC, HWIO, NHWC: the model's
  y = lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), strides,
                               padding, dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  return y.transpose(0, 2, 3, 1)


class _Lax:
  """The `lax` the model sees, with conv_general_dilated replaced."""

  def __init__(self, conv):
    self.conv_general_dilated = conv

  def __getattr__(self, name):
    return getattr(lax, name)


class _BatchedTowerLayer(model_lib.TowerLayer):
  """Dense layers of the local towers as one batched matrix product (no kernel[t] copies)."""

  @nn.compact
  def __call__(self, inputs):
    if self.spec.is_conv or len(inputs) == 1:
      return super().__call__(inputs)
    dtype = jnp.dtype(self.config.dtype)
    kernel_init, bias_init = model_lib.layer_init(self.config, self.spec.name)
    kernel = self.param('kernel', nn.with_partitioning(kernel_init, ('tower', None, None)),
                        (len(inputs), self.spec.in_features, self.spec.features))
    bias = self.param('bias', nn.with_partitioning(bias_init, ('tower', None)),
                      (len(inputs), self.spec.features))
    outputs = jnp.einsum('tbi,tio->tbo', jnp.stack(inputs), kernel.astype(dtype))
    return list(outputs + bias[:, None, :].astype(dtype))


def _ynn_types(*types: str) -> dict:
  """Compiler options that send exactly these op types to YNNPACK on the CPU."""
  return {'xla_cpu_experimental_ynn_fusion_type':
          ','.join(f'LIBRARY_FUSION_TYPE_{t.upper()}' for t in types)}


PATCHES = {
    'lrn_shifts': lambda: setattr(model_lib, 'local_response_norm', lrn_shifts),
    'lrn_banded': lambda: setattr(model_lib, 'local_response_norm', lrn_banded),
    'pool_slices': lambda: setattr(model_lib, 'max_pool', pool_slices),
    'space_to_depth': lambda: setattr(model_lib, 'lax', _Lax(space_to_depth_conv)),
    'nchw': lambda: setattr(model_lib, 'lax', _Lax(nchw_conv)),
    'dense_batched': lambda: setattr(model_lib, 'TowerLayer', _BatchedTowerLayer),
    # The training step's CPU compiler options (train.CPU_COMPILER_OPTIONS) replaced:
    'ynn_default': lambda: setattr(train, 'CPU_COMPILER_OPTIONS', {}),  # jaxlib's own choice
    'ynn_reduce_only': lambda: setattr(train, 'CPU_COMPILER_OPTIONS', _ynn_types('reduce')),
    'ynn_eltwise': lambda: setattr(train, 'CPU_COMPILER_OPTIONS',
                                   _ynn_types('individual_dot', 'reduce', 'eltwise')),
}


def apply(names) -> None:
  for name in names:
    PATCHES[name]()
