"""The net's spatial arithmetic: the feature-map sizes an input size gives (integers only).

A leaf: it imports nothing of the package, so the config (which refuses an input too small
for the net) and the model (whose layer table it sizes) both take it from here. Each
function reads what it needs of a ModelConfig: image_size, overlapping_pool, conv1_padding,
pool_rounding.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple


class FeatureMaps(NamedTuple):
  """Sides of the square feature maps, and conv1's zero padding on the bottom/right."""
  conv1: int        # conv1's output (55 for 224 and 227)
  conv1_pad: int
  pool1: int        # after conv1's pool: conv2's input (27)
  pool2: int        # after conv2's pool: conv3..conv5 (13)
  pool5: int        # after conv5's pool: fc6's input (6)


def pool_window(config) -> tuple[int, int]:
  """(window, stride) of every max-pool: overlapping 3/2 (paper) or 2/2."""
  return (3, 2) if config.overlapping_pool else (2, 2)


def pooled(size: int, config) -> tuple[int, int]:
  """(output side, -inf padding on the bottom/right) of a max-pool over `size` positions.

  floor (the paper's, cuda-convnet's): every window lies inside the map. ceil (Caffe's):
  ceil((size - window) / stride) + 1 windows, the last one padded where it passes the edge.
  """
  window, stride = pool_window(config)
  if config.pool_rounding == 'ceil':
    out = -(-(size - window) // stride) + 1
    return out, max(0, (out - 1) * stride + window - size)
  return (size - window) // stride + 1, 0


def feature_maps(config) -> FeatureMaps:
  """The feature-map sides of config's input.

  conv1 (11x11, stride 4) has no padding on the left; like cuda-convnet, its output has
  1 + ceil((S - 11) / 4) positions, so 227 is exact and 224 gets 3 pixels of zero padding
  on the bottom/right: both give 55. With conv1_padding='valid' (Caffe's) it has
  1 + floor((S - 11) / 4): 54 for 224, the last pixel of each row and column unread.
  """
  positions = config.image_size - 11
  conv1 = 1 + (positions // 4 if config.conv1_padding == 'valid' else -(-positions // 4))
  pool1, _ = pooled(conv1, config)
  pool2, _ = pooled(pool1, config)
  return FeatureMaps(conv1, max(0, (conv1 - 1) * 4 + 11 - config.image_size), pool1, pool2,
                     pooled(pool2, config)[0])


def smallest_image_size(config) -> int:
  """The smallest input for which conv5's pooled feature map is still 1x1."""
  size = 11
  while feature_maps(dataclasses.replace(config, image_size=size)).pool5 < 1:
    size += 1
  return size
