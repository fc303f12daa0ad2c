"""A single-device AlexNet written the way Caffe wrote it: grouped convolutions.

It shares no code with alexnet_jax.model. It takes the tower-stacked parameters of the
real model and rearranges them into the weights of one grouped network:
conv2/4/5 use feature_group_count=2, the crossing layers are ordinary layers over all
channels, and fc8 is one dense layer over the concatenated fc7. With caffe=True it is
Caffe's bvlc_alexnet: LRN (k=1, alpha/5) over all channels of the layer, conv1 without
padding, pools in ceil mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

GROUPED = {'conv1': 1, 'conv2': 2, 'conv3': 1, 'conv4': 2, 'conv5': 2}
STRIDES = {'conv1': 4}
PADS = {'conv2': 2, 'conv3': 1, 'conv4': 1, 'conv5': 1}


def lrn_numpy(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """Paper section 3.3, literally: b_i = a_i / (k + alpha sum_j a_j^2)^beta."""
  a = np.asarray(a, np.float64)
  channels = a.shape[-1]
  out = np.empty_like(a)
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    out[..., i] = a[..., i] / (k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)) ** beta
  return out


def _lrn_per_group(x, groups, k=2.0, alpha=1e-4):
  """LRN within each group's channels, via a cumulative sum (another route than the model's)."""
  parts = []
  for part in jnp.split(x, groups, axis=-1):
    sq = jnp.pad(jnp.square(part), [(0, 0)] * 3 + [(3, 2)])
    csum = jnp.cumsum(sq, axis=-1)
    window = csum[..., 5:] - csum[..., :-5]
    parts.append(part / (k + alpha * window) ** 0.75)
  return jnp.concatenate(parts, axis=-1)


def _pool(x, ceil=False):
  """3x3/2 max-pool; ceil: Caffe's ceil((H - 3) / 2) + 1 windows, the last partly outside."""
  pad = 0
  if ceil and (x.shape[1] - 3) % 2:
    pad = 1
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (0, pad), (0, pad), (0, 0)))


def grouped_weights(params):
  """Tower-stacked parameters -> the weights of the one grouped network."""
  weights = {}
  for name, layer in params.items():
    kernel, bias = layer['kernel'], layer['bias']
    towers = [kernel[t] for t in range(kernel.shape[0])]
    if name == 'fc8':  # input split across towers: stack the input rows
      weights[name] = (jnp.concatenate(towers, axis=0), bias)
    else:              # output split across towers: stack the output columns
      weights[name] = (jnp.concatenate(towers, axis=-1), jnp.reshape(bias, (-1,)))
  return weights


def logits(params, images, lrn=True, caffe=False):
  """Forward pass of the grouped network (dropout off)."""
  w = grouped_weights(params)
  x = images
  for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
    kernel, bias = w[name]
    if name == 'conv1' and caffe:
      pad = ((0, 0), (0, 0))
    elif name == 'conv1':  # cuda-convnet: pad bottom/right until 1 + ceil((S - 11) / 4) outputs
      out = -(-(x.shape[1] - 11) // 4) + 1
      pad = ((0, (out - 1) * 4 + 11 - x.shape[1]),) * 2
    else:
      pad = ((PADS[name], PADS[name]),) * 2
    s = STRIDES.get(name, 1)
    x = lax.conv_general_dilated(x, kernel, (s, s), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                 feature_group_count=GROUPED[name],
                                 precision=lax.Precision.HIGHEST) + bias
    x = jax.nn.relu(x)
    if name in ('conv1', 'conv2') and lrn:
      x = _lrn_per_group(x, 1, k=1.0, alpha=1e-4 / 5) if caffe else _lrn_per_group(x, 2)
    if name in ('conv1', 'conv2', 'conv5'):
      x = _pool(x, ceil=caffe)
  x = x.reshape(x.shape[0], -1)
  for name in ('fc6', 'fc7'):
    kernel, bias = w[name]
    x = jax.nn.relu(jnp.dot(x, kernel, precision=lax.Precision.HIGHEST) + bias)
  kernel, bias = w['fc8']
  return jnp.dot(x, kernel, precision=lax.Precision.HIGHEST) + bias


def scores(params, images, labels):
  """(top-1, top-5, mean cross-entropy) of the reference net on (N, S, S, 3) inputs."""
  logits = np.asarray(_logits(params, images), np.float64)
  log_probs = logits - logits.max(axis=-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(axis=-1, keepdims=True))
  ranked = np.argsort(-log_probs, axis=-1)[:, :5]
  hit = ranked == np.asarray(labels)[:, None]
  loss = -log_probs[np.arange(len(labels)), labels]
  return hit[:, 0].mean(), hit.any(axis=-1).mean(), loss.mean()


def _cross_entropy(params, images, labels):
  log_probs = jax.nn.log_softmax(logits(params, images))
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


_logits = jax.jit(logits)
_loss_and_grads = jax.jit(jax.value_and_grad(_cross_entropy))


def paper_sgd(params, batches, learning_rate, momentum=0.9, weight_decay=5e-4):
  """(loss of every step, final parameters) of the paper's SGD on the reference net.

  Section 5, written out: v <- momentum v - weight_decay lr w - lr grad; w <- w + v.
  Biases are not decayed (cuda-convnet2). batches: (float inputs, labels) per step.
  """
  velocity = jax.tree.map(jnp.zeros_like, params)
  losses = []
  for images, labels in batches:
    loss, grads = _loss_and_grads(params, images, labels)
    losses.append(float(loss))
    for name, layer in params.items():
      for kind, w in layer.items():
        decay = weight_decay * w if kind == 'kernel' else 0.0
        velocity[name][kind] = (momentum * velocity[name][kind]
                                - learning_rate * (decay + grads[name][kind]))
    params = jax.tree.map(jnp.add, params, velocity)
  return losses, params
