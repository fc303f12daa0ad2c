"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as the paper ran it: two towers.

The model knows towers, not devices. Every tower-local parameter carries a leading
tower axis, and a layer runs one convolution (or matrix product) per tower that is
present in the arrays it is given. Where a layer reads the other tower (the four
crossings: into conv3, fc6, fc7 and fc8), it asks a `TowerExchange` for the
activations of all towers. Caffe's LRN (`lrn_variant='caffe'`) adds a crossing at
conv1's and conv2's LRN: it asks for the edge channels of the neighbouring tower.
`LocalTowers` (every tower on this device) concatenates them; `alexnet_jax.parallel`
supplies an exchange that calls collectives over the mesh's 'tower' axis (and, for the 2014
hybrid, gathers what a fully-connected layer split by units reads). Nothing here
knows about meshes: parameters and activations carry logical axis names (below), which
each parallelism strategy maps to mesh axes with its own table of rules
(`alexnet_jax.strategies`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax import geometry
from alexnet_jax.config import ModelConfig

# The paper's whole-net widths. The one-GPU ablation (footnote 2) halves conv1..conv4
# but keeps conv5 and the fully-connected layers at full width, with no groups.
PAPER_WIDTHS = {
    2: {'conv1': 96, 'conv2': 256, 'conv3': 384, 'conv4': 384, 'conv5': 256, 'fc6': 4096, 'fc7': 4096},
    1: {'conv1': 48, 'conv2': 128, 'conv3': 192, 'conv4': 192, 'conv5': 256, 'fc6': 4096, 'fc7': 4096},
}


@dataclasses.dataclass(frozen=True)
class LRNConstants:
  """b_i = a_i / (k + alpha' * sum_{|j-i| <= n/2} a_j^2) ** beta, alpha' = alpha / n or alpha."""
  k: float
  n: int
  alpha: float              # as its authors write it
  beta: float
  alpha_over_n: bool        # the sum is multiplied by alpha / n (Caffe, ONNX, PyTorch)
  across_towers: bool       # the window runs over the whole layer's channels, not one tower's

  @property
  def coefficient(self) -> float:
    return self.alpha / self.n if self.alpha_over_n else self.alpha


# Local response normalization, ModelConfig.lrn_variant -> its constants.
LRN = {
    # Paper section 3.3 in its own convention, alpha NOT divided by n, within each tower
    # (= tf.nn.local_response_normalization(depth_radius=2, bias=2, alpha=1e-4, beta=0.75)).
    'paper': LRNConstants(k=2.0, n=5, alpha=1e-4, beta=0.75, alpha_over_n=False,
                          across_towers=False),
    # Caffe's bvlc_alexnet (lrn_param local_size 5, alpha 1e-4, beta 0.75, k 1 by default),
    # ONNX's LRN(size=5, alpha=1e-4, beta=0.75, bias=1): one window over all 96 or 256
    # channels, so the two channels at each tower's edge come from the other tower.
    'caffe': LRNConstants(k=1.0, n=5, alpha=1e-4, beta=0.75, alpha_over_n=True,
                          across_towers=True),
}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One weight layer of the net with its geometry, per tower."""
  name: str
  in_features: int          # channels (or inputs) each tower reads, after any crossing
  features: int             # channels (or outputs) each tower writes
  crosses: bool             # reads the activations of every tower
  kernel: int = 0           # 0 for fully-connected layers
  stride: int = 1
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  conv_size: int = 0        # spatial size after the convolution
  lrn: bool = False
  pool: bool = False
  pool_pad: int = 0         # -inf rows/columns at the pool's bottom/right (ceil rounding)
  out_size: int = 0         # spatial size after pooling (conv_size if no pool)
  relu: bool = True
  dropout: bool = False

  @property
  def is_conv(self) -> bool:
    return self.kernel > 0


def _channels(config: ModelConfig, layer: str) -> int:
  """Channels per tower after the width multiplier."""
  per_tower = PAPER_WIDTHS[config.towers][layer] // config.towers
  return max(1, round(per_tower * config.width))


def layer_specs(config: ModelConfig) -> list[LayerSpec]:
  """The paper's layer table for this configuration; the model is built from it."""
  towers = config.towers
  sizes = geometry.feature_maps(config)
  pool_pad = lambda size: geometry.pooled(size, config)[1]

  def reads(name: str, own: int) -> tuple[int, bool]:
    crosses = name in config.crossings and towers > 1
    return (own * towers if crosses else own), crosses

  specs = []
  previous = 3
  layout = {
      'conv1': dict(kernel=11, stride=4, padding=((0, sizes.conv1_pad),) * 2,
                    conv_size=sizes.conv1, lrn=config.lrn, pool=True,
                    pool_pad=pool_pad(sizes.conv1), out_size=sizes.pool1),
      'conv2': dict(kernel=5, padding=((2, 2), (2, 2)), conv_size=sizes.pool1, lrn=config.lrn,
                    pool=True, pool_pad=pool_pad(sizes.pool1), out_size=sizes.pool2),
      'conv3': dict(kernel=3, padding=((1, 1), (1, 1)), conv_size=sizes.pool2,
                    out_size=sizes.pool2),
      'conv4': dict(kernel=3, padding=((1, 1), (1, 1)), conv_size=sizes.pool2,
                    out_size=sizes.pool2),
      'conv5': dict(kernel=3, padding=((1, 1), (1, 1)), conv_size=sizes.pool2, pool=True,
                    pool_pad=pool_pad(sizes.pool2), out_size=sizes.pool5),
      'fc6': dict(dropout=True),
      'fc7': dict(dropout=True),
  }
  for name, geo in layout.items():
    features = _channels(config, name)
    if name == 'fc6':
      previous *= max(sizes.pool5, 0) ** 2
    in_features, crosses = reads(name, previous)
    if name == 'conv1':
      in_features, crosses = 3, False  # every tower sees the whole image
    specs.append(LayerSpec(name, in_features, features, crosses, **geo))
    previous = features
  # fc8 is one layer over every tower's fc7: each tower multiplies its own fc7 by its
  # slice of the weights and the partial products are summed (cuda-convnet2's fc1000).
  specs.append(LayerSpec('fc8', previous, config.num_classes, towers > 1, relu=False))
  return specs


# ----------------------------------------------------------------------------------
# Logical axis names: what each axis of a parameter or an activation is. A strategy's rules
# (strategies.RULES) say which mesh axis, if any, splits each; the model names no mesh axis.

# Parameters. 'towers' indexes the towers (the leading axis of every tower-local layer).
CONV_KERNEL = ('towers', 'kernel_height', 'kernel_width', 'conv_in', 'conv_out')
CONV_BIAS = ('towers', 'conv_out')
FC_KERNEL = ('towers', 'fc_in', 'fc_out')
FC_BIAS = ('towers', 'fc_out')
CLASSIFIER_KERNEL = ('towers', 'fc_in', 'classes')
CLASSIFIER_BIAS = ('classes',)
# Activations, pinned where a layer reads or writes them. The fully-connected layers have a
# batch axis of their own ('fc_batch'), so a strategy can run them on another split of the
# batch than the convolutions (the 2014 hybrid: the whole batch, split by units).
IMAGE_MAPS = ('batch', 'height', 'width', 'channels')
FC_INPUTS = ('fc_batch', 'fc_inputs')
FC_OUTPUTS = ('fc_batch', 'units')
PARTIAL_LOGITS = ('fc_batch', 'classes')
LOGITS = ('batch', 'classes')


def place(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
  """Pins x's layout to `names` under the strategy's rules; a no-op where none are set (one
  device, or inside the towers' shard_map, whose collectives are explicit)."""
  return nn.with_logical_constraint(x, names)


# ----------------------------------------------------------------------------------
# Building blocks.


def local_response_norm(x: jax.Array, variant: str = 'paper',
                        widened: jax.Array | None = None) -> jax.Array:
  """LRN (model.LRN[variant]) over the channel (last) axis of one tower's activations.

  widened: x with n // 2 channels of the neighbouring towers on each side (zeros past the
  layer's ends), for a window across towers; None: the window stops at x's own channels.
  """
  lrn = LRN[variant]
  half = lrn.n // 2
  squared = jnp.square((x if widened is None else widened).astype(jnp.float32))
  window_sum = lax.reduce_window(
      squared, 0.0, lax.add,
      window_dimensions=(1,) * (x.ndim - 1) + (lrn.n,),
      window_strides=(1,) * x.ndim,
      padding=((0, 0),) * (x.ndim - 1) + (((half, half),) if widened is None else ((0, 0),)))
  scale = (lrn.k + lrn.coefficient * window_sum) ** -lrn.beta
  return (x * scale).astype(x.dtype)


def max_pool(x: jax.Array, config: ModelConfig, pad: int = 0) -> jax.Array:
  window, stride = geometry.pool_window(config)
  padding = ((0, pad), (0, pad)) if pad else 'VALID'  # flax pads a max-pool with -inf
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding)


def layer_init(config: ModelConfig, name: str):
  """(kernel_init, bias_init) for a layer under the chosen scheme.

  paper: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7 (positive
         inputs for the ReLUs), 0 elsewhere.
  caffe: bvlc_alexnet: N(0, 0.01) but N(0, 0.005) for fc6, fc7; those biases 0.1.
  he:    He-normal weights per tower, zero biases; starts learning on small, short runs.
  """
  positive_bias = name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7')
  if config.init == 'paper':
    return nn.initializers.normal(0.01), nn.initializers.constant(1.0 if positive_bias else 0.0)
  if config.init == 'caffe':
    std = 0.005 if name in ('fc6', 'fc7') else 0.01
    return nn.initializers.normal(std), nn.initializers.constant(0.1 if positive_bias else 0.0)
  # Leading axis 0 indexes towers, so fan-in is computed per tower.
  return nn.initializers.he_normal(batch_axis=(0,)), nn.initializers.zeros


class TowerExchange(Protocol):
  """How the parts of the net present in this call reach the others: the towers at a
  crossing, and (under the 2014 hybrid) the fully-connected layers' units."""
  local_towers: int

  def gather(self, parts: Sequence[jax.Array]) -> jax.Array:
    """Every tower's activations, concatenated on the last axis in tower order."""

  def sum(self, parts: Sequence[jax.Array]) -> jax.Array:
    """The sum over every tower of the per-tower values."""

  def tower_index(self, local: int) -> jax.Array | int:
    """The global index of local tower `local` (dropout keys differ per tower)."""

  def example_ids(self, batch: int) -> jax.Array:
    """Global indices of the examples in this call's batch (dropout keys)."""

  def halo(self, parts: Sequence[jax.Array], width: int) -> list[jax.Array]:
    """Each local tower's activations widened by `width` channels on each side: the edge
    channels of the neighbouring towers in the layer, zeros past its first and last."""

  def local_units(self, units: int) -> int:
    """How many of a fully-connected layer's `units` (per tower) this call computes."""

  def unit_offset(self, local: int) -> jax.Array | int:
    """The index, among its layer's units, of the first of the `local` this call computes."""

  def whole(self, x: jax.Array) -> jax.Array:
    """One tower's output as a fully-connected layer reads it: every example that layer
    runs on, every unit of the tower."""

  def logits(self, x: jax.Array) -> jax.Array:
    """The classifier's output of this call, split over the examples as the images are."""


@dataclasses.dataclass(frozen=True)
class LocalTowers:
  """Every tower runs here, one after the other: crossings are concatenations, and each
  layer computes all of its units for the examples of this call."""
  local_towers: int

  def gather(self, parts):
    return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

  def sum(self, parts):
    return sum(parts[1:], parts[0])

  def tower_index(self, local):
    return local

  def example_ids(self, batch):
    return jnp.arange(batch)

  def halo(self, parts, width):
    layer = jnp.pad(self.gather(parts), ((0, 0),) * (parts[0].ndim - 1) + ((width, width),))
    channels = parts[0].shape[-1]
    return [layer[..., t * channels:(t + 1) * channels + 2 * width] for t in range(len(parts))]

  def local_units(self, units):
    return units

  def unit_offset(self, local):
    return 0

  def whole(self, x):
    return x

  def logits(self, x):
    return x


def dropout(x: jax.Array, rate: float, key: jax.Array, example_ids: jax.Array,
            units: int | None = None, offset: jax.Array | int = 0) -> jax.Array:
  """Inverted dropout of (examples, units) with one key per example.

  Keying each example by its global index makes the masks independent of how the batch
  is split over devices: every mesh shape drops the same units. x may hold `x.shape[1]`
  of a layer's `units` from `offset` on (units split over devices): each example's mask
  is drawn for all of them, and x takes its slice.
  """
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, example_ids)
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, (units or x.shape[1],)))(keys)
  if units:
    keep = lax.dynamic_slice_in_dim(keep, offset, x.shape[1], axis=1)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class TowerLayer(nn.Module):
  """A convolution or dense layer with one set of weights per tower.

  Parameters have a leading tower axis (logical name 'towers'); the layer applies tower
  t's weights to inputs[t] with its own convolution per tower.
  """
  spec: LayerSpec
  config: ModelConfig
  local_towers: int
  features: int             # of spec.features, those this call computes (per tower)

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array]) -> list[jax.Array]:
    spec, dtype = self.spec, jnp.dtype(self.config.dtype)
    kernel_init, bias_init = layer_init(self.config, spec.name)
    if spec.is_conv:
      shape = (spec.kernel, spec.kernel, spec.in_features, self.features)
      kernel_names, bias_names, output_names = CONV_KERNEL, CONV_BIAS, IMAGE_MAPS
    else:
      shape = (spec.in_features, self.features)
      kernel_names, bias_names, output_names = FC_KERNEL, FC_BIAS, FC_OUTPUTS
      inputs = [place(x, FC_INPUTS) for x in inputs]
    kernel = self.param('kernel', nn.with_logical_partitioning(kernel_init, kernel_names),
                        (self.local_towers,) + shape)
    bias = self.param('bias', nn.with_logical_partitioning(bias_init, bias_names),
                      (self.local_towers, self.features))
    outputs = []
    for t, x in enumerate(inputs):
      w = kernel[t].astype(dtype)
      if spec.is_conv:
        y = lax.conv_general_dilated(x, w, (spec.stride, spec.stride), spec.padding,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      else:
        y = x @ w
      outputs.append(place(y + bias[t].astype(dtype), output_names))
    return outputs


class Classifier(nn.Module):
  """fc8: logits = sum over towers of fc7_t @ W_t, plus one shared bias."""
  spec: LayerSpec
  config: ModelConfig
  exchange: TowerExchange

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array]) -> jax.Array:
    spec, dtype, exchange = self.spec, jnp.dtype(self.config.dtype), self.exchange
    kernel_init, bias_init = layer_init(self.config, spec.name)
    classes = exchange.local_units(spec.features)
    kernel = self.param('kernel', nn.with_logical_partitioning(kernel_init, CLASSIFIER_KERNEL),
                        (exchange.local_towers, spec.in_features, classes))
    bias = self.param('bias', nn.with_logical_partitioning(bias_init, CLASSIFIER_BIAS),
                      (classes,))
    with jax.named_scope('gather_into_fc8'):
      inputs = [exchange.whole(x) for x in inputs]
    partials = [place(place(x, FC_INPUTS) @ kernel[t].astype(dtype), PARTIAL_LOGITS)
                for t, x in enumerate(inputs)]
    with jax.named_scope('cross_into_fc8'):
      logits = exchange.sum(partials)
    return place(exchange.logits(logits + bias.astype(dtype)), LOGITS)


class AlexNet(nn.Module):
  """The paper's net. `exchange` says which towers run in this call and how they meet."""
  config: ModelConfig
  exchange: TowerExchange | None = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """images: (batch, H, W, 3), already normalized. Returns float32 logits."""
    config = self.config
    exchange = self.exchange or LocalTowers(config.towers)
    if train and config.dropout_rate > 0 and dropout_rng is None:
      raise ValueError('training with dropout needs dropout_rng')
    specs = layer_specs(config)
    x = place(images.astype(config.dtype), IMAGE_MAPS)
    towers = [x] * exchange.local_towers  # every tower sees the whole image
    for index, spec in enumerate(specs[:-1]):
      if not spec.is_conv:
        with jax.named_scope(f'gather_into_{spec.name}'):
          towers = [exchange.whole(h) for h in towers]
      if spec.crosses:
        with jax.named_scope(f'cross_into_{spec.name}'):
          shared = exchange.gather(towers)
        towers = [shared] * exchange.local_towers
      if not spec.is_conv:
        towers = [h.reshape(h.shape[0], -1) for h in towers]
      features = spec.features if spec.is_conv else exchange.local_units(spec.features)
      towers = TowerLayer(spec, config, exchange.local_towers, features, name=spec.name)(towers)
      towers = [nn.relu(h) for h in towers]
      if spec.lrn:
        towers = self._normalize(towers, spec, exchange)
      towers = [self._after(h, spec, index, train, dropout_rng, exchange, t)
                for t, h in enumerate(towers)]
      self.sow('intermediates', f'{spec.name}_output', towers)  # kept only when asked for (tests, figures)
    fc8 = specs[-1]
    logits = Classifier(fc8, config, exchange, name=fc8.name)(towers)
    return logits.astype(jnp.float32)

  def _normalize(self, towers, spec, exchange):
    """LRN within each tower, or across the towers (Caffe's): the edge channels of the
    neighbouring tower come from the exchange."""
    variant = self.config.lrn_variant
    if not LRN[variant].across_towers:
      return [local_response_norm(h, variant) for h in towers]
    with jax.named_scope(f'cross_into_{spec.name}_lrn'):
      widened = exchange.halo(towers, LRN[variant].n // 2)
    return [local_response_norm(h, variant, w) for h, w in zip(towers, widened)]

  def _after(self, h, spec, index, train, dropout_rng, exchange, local_tower):
    """Max-pool / dropout where the layer has them."""
    if spec.pool:
      h = max_pool(h, self.config, spec.pool_pad)
    if spec.dropout and train and self.config.dropout_rate > 0:
      key = jax.random.fold_in(jax.random.fold_in(dropout_rng, index),
                               exchange.tower_index(local_tower))
      units = None if h.shape[1] == spec.features else spec.features
      h = dropout(h, self.config.dropout_rate, key, exchange.example_ids(h.shape[0]), units,
                  exchange.unit_offset(h.shape[1]))
    return h


@functools.partial(jax.jit, static_argnames='config')
def init_params(config: ModelConfig, rng: jax.Array):
  """Float32 parameters of all towers, boxed with their logical axis names."""
  size = config.image_size
  dummy = jnp.zeros((1, size, size, 3), jnp.float32)
  return AlexNet(config).init(rng, dummy)['params']


def count_params(params) -> int:
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
