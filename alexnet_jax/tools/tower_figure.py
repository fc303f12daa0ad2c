"""The paper's Figure 2 drawn from the layer table: the towers as rows of boxes.

Every number on the figure is taken from `model.layer_specs` (shapes, kernels, strides,
padding) or from the bytes per image it is given for the crossings. `draw` returns what
it wrote in each box and on each crossing, so a test can hold those numbers against the
table.
"""

from __future__ import annotations

import dataclasses
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import patches  # pylint: disable=g-import-not-at-top

from alexnet_jax import geometry
from alexnet_jax import model as model_lib
from alexnet_jax.config import ModelConfig

COLUMN = 1.0          # horizontal distance between layers (data units)
BOX_WIDTH = 0.66
BOX_HEIGHT = 1.25
ROW_STEP = 2.2        # vertical distance between the towers' rows
FONT_SIZE = 8.5
DPI = 120
TOWER_COLORS = ('#dbe8f6', '#f8e3cf')   # tower 1 blue, tower 2 orange
SHARED_COLOR = '#e6e6e6'                # input and the summed fc8
CROSSING_COLOR = '#c0392b'


@dataclasses.dataclass(frozen=True)
class Label:
  """One piece of text on the figure."""
  kind: str        # 'input', 'layer' or 'crossing'
  layer: str       # '' for the input
  tower: int       # 1-based tower of a layer box; 0 for a box or crossing shared by all towers
  text: str


def _shape(size: int, channels: int) -> str:
  return f'{size}×{size}×{channels}'


def layer_text(spec: model_lib.LayerSpec, config: ModelConfig) -> str:
  """What one tower's box of this layer says (the box of fc8 when it sums the towers)."""
  if spec.is_conv:
    (before, after), _ = spec.padding
    pad = f'{before}' if before == after else f'({before}, {after})'
    lines = [spec.name, f'{spec.features} × {spec.kernel}×{spec.kernel}×{spec.in_features}',
             f'stride {spec.stride}, pad {pad}', f'→ {_shape(spec.conv_size, spec.features)}',
             'ReLU' + (', LRN' if spec.lrn else '')]
    if spec.pool:
      window, stride = geometry.pool_window(config)
      lines += [f'max-pool {window}×{window} /{stride}',
                f'→ {_shape(spec.out_size, spec.features)}']
    return '\n'.join(lines)
  if spec.name == 'fc8' and spec.crosses:
    return '\n'.join([spec.name, f'{config.towers} × ({spec.in_features} → {spec.features})',
                      'summed', f'→ {spec.features} logits', 'softmax'])
  after = 'ReLU, dropout' if spec.dropout else ('ReLU' if spec.relu else 'softmax')
  lines = [spec.name, f'{spec.in_features} → {spec.features}', after]
  if not spec.relu:
    lines.insert(2, f'→ {spec.features} logits')
  return '\n'.join(lines)


def draw(config: ModelConfig, crossing_bytes: dict[str, float], path: str) -> list[Label]:
  """Writes the figure to `path` (PNG); returns its labels.

  crossing_bytes: crossing layer -> bytes per image one device receives in the forward pass.
  """
  specs = model_lib.layer_specs(config)
  towers = config.towers
  top = (towers - 1) * ROW_STEP
  middle = top / 2
  row_y = [top - t * ROW_STEP for t in range(towers)]   # tower 1 on top, as in the paper
  figure, axes = plt.subplots(figsize=(2.3 * (len(specs) + 1), 2.5 * towers + 1.4))
  axes.set_xlim(-0.45, len(specs) + 0.55)
  axes.set_ylim(-BOX_HEIGHT / 2 - 0.55, top + BOX_HEIGHT / 2 + 0.5)
  axes.axis('off')
  labels = []

  def box(x, y, height, text, color, label):
    axes.add_patch(patches.FancyBboxPatch(
        (x - BOX_WIDTH / 2, y - height / 2), BOX_WIDTH, height, boxstyle='round,pad=0.02',
        facecolor=color, edgecolor='#333333', linewidth=1.0))
    first, _, rest = text.partition('\n')
    axes.text(x, y + height / 2 - 0.1, first, ha='center', va='top', fontsize=FONT_SIZE + 1,
              fontweight='bold')
    axes.text(x, y + height / 2 - 0.3, rest, ha='center', va='top', fontsize=FONT_SIZE,
              linespacing=1.35)
    labels.append(label)

  def arrow(start, end, color='#333333', width=1.2):
    axes.annotate('', xy=end, xytext=start, arrowprops=dict(
        arrowstyle='-|>', color=color, linewidth=width, shrinkA=0, shrinkB=0,
        mutation_scale=12))

  def crossing_label(x, y, layer):
    text = f'{crossing_bytes[layer]:,.0f} B/image'
    axes.text(x, y, text, ha='center', va='center', fontsize=FONT_SIZE, color=CROSSING_COLOR,
              fontweight='bold', bbox=dict(facecolor='white', edgecolor=CROSSING_COLOR,
                                           boxstyle='round,pad=0.25'))
    labels.append(Label('crossing', layer, 0, text))

  shared_height = top + BOX_HEIGHT if towers > 1 else BOX_HEIGHT
  input_text = f'input\n{_shape(config.image_size, 3)}'
  box(0, middle, shared_height, input_text, SHARED_COLOR, Label('input', '', 0, input_text))
  for y in row_y:
    arrow((BOX_WIDTH / 2, middle + (y - middle) * 0.6), (COLUMN - BOX_WIDTH / 2, y))
  for column, spec in enumerate(specs, start=1):
    x = column * COLUMN
    left, right = x - COLUMN + BOX_WIDTH / 2, x - BOX_WIDTH / 2
    text = layer_text(spec, config)
    if spec.name == 'fc8' and spec.crosses:   # one box: the towers' partial logits are summed
      box(x, middle, shared_height, text, SHARED_COLOR, Label('layer', spec.name, 0, text))
      for y in row_y:
        arrow((left, y), (right, middle + (y - middle) * 0.6), CROSSING_COLOR, 1.8)
      crossing_label((left + right) / 2, middle, spec.name)
      continue
    for tower, y in enumerate(row_y):
      box(x, y, BOX_HEIGHT, text, TOWER_COLORS[tower], Label('layer', spec.name, tower + 1, text))
      if column > 1:
        arrow((left, y), (right, y))
    if spec.crosses:   # each tower also reads the other's previous output
      inward = lambda y: y + (BOX_HEIGHT / 2 - 0.1) * (1 if y < middle else -1)
      for y, other in zip(row_y, reversed(row_y)):
        arrow((left, inward(other)), (right, inward(y)), CROSSING_COLOR, 1.8)
      crossing_label((left + right) / 2, middle, spec.name)
  for tower, y in enumerate(row_y):
    axes.text(-0.42, y, f'tower {tower + 1}', rotation=90, ha='center', va='center',
              fontsize=FONT_SIZE + 1, color='#555555')
  axes.set_title(f'AlexNet\'s Figure 2 from the layer table: '
                 f'{towers} tower{"s" if towers > 1 else ""}, '
                 f'{config.image_size}×{config.image_size} input, width ×{config.width:g}, '
                 f'{config.num_classes} classes', fontsize=FONT_SIZE + 3)
  if any(spec.crosses for spec in specs):
    axes.text(len(specs) / 2, -BOX_HEIGHT / 2 - 0.4, 'red: the towers exchange activations; '
              'bytes per image one device receives in the compiled training step',
              ha='center', va='center', fontsize=FONT_SIZE, color=CROSSING_COLOR)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=DPI, bbox_inches='tight', metadata={'Software': None})
  plt.close(figure)
  return labels
