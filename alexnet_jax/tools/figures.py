"""PNG figures: learning curves, and the image grids of the paper's Figures 3 and 4.

Image grids are drawn with numpy and written with PIL, so their size follows exactly
from their cells: R x C cells of h x w pixels, `pad` pixels between and around them, make
an image of (R * (h + pad) + pad) x (C * (w + pad) + pad) pixels.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
from matplotlib import font_manager  # pylint: disable=g-import-not-at-top
from matplotlib import ft2font  # pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image
from PIL import ImageDraw

from alexnet_jax import metrics as metrics_lib

PAD = 2                     # pixels between and around the cells of a grid
BACKGROUND = 255            # white
KERNEL_SCALE = 4            # an 11 x 11 kernel is drawn as 44 x 44 pixels
KERNEL_COLUMNS = 16         # the paper's 48 kernels per tower make 3 rows
TOWER_GAP = 8               # extra pixels between tower 1's rows and tower 2's
LABEL_WIDTH = 56            # the column left of the kernels that names each tower
LABEL_COLOR = (0, 0, 0)
BORDER = 3                  # frame around each image of the neighbour grid
QUERY_COLOR = (40, 40, 40)
SAME_LABEL_COLOR = (30, 160, 60)
OTHER_LABEL_COLOR = (210, 40, 40)


def save_png(image: np.ndarray, path: str) -> str:
  """Writes a uint8 (H, W, 3) image as PNG, creating its folder; returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image).save(path)
  return path


def tile(cells: np.ndarray, pad: int = PAD) -> np.ndarray:
  """uint8 cells (R, C, h, w, 3) -> one (R*(h+pad)+pad, C*(w+pad)+pad, 3) image."""
  rows, cols, h, w, _ = cells.shape
  image = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), BACKGROUND, np.uint8)
  for r in range(rows):
    for c in range(cols):
      y, x = pad + r * (h + pad), pad + c * (w + pad)
      image[y:y + h, x:x + w] = cells[r, c]
  return image


def normalize_kernels(kernels: np.ndarray) -> np.ndarray:
  """(..., k, k, 3, C) -> the same in [0, 1], each kernel min-max over its k*k*3 values.

  One range per kernel (not per channel) keeps its colours; a constant kernel is grey.
  """
  kernels = np.asarray(kernels, np.float64)
  low = kernels.min(axis=(-4, -3, -2), keepdims=True)
  span = kernels.max(axis=(-4, -3, -2), keepdims=True) - low
  return np.where(span > 0, (kernels - low) / np.where(span > 0, span, 1.0), 0.5)


def kernel_grid(kernels: np.ndarray, scale: int = KERNEL_SCALE,
                columns: int = KERNEL_COLUMNS, pad: int = PAD) -> np.ndarray:
  """Figure 3: first-layer kernels (towers, k, k, 3, C) as one uint8 RGB image.

  Each tower's C kernels fill rows of min(columns, C) cells of (k*scale)^2 pixels;
  tower 1's rows come first, tower 2's below them after TOWER_GAP more pixels. So the
  image is T*(R*(k*scale+pad)+pad) + (T-1)*TOWER_GAP high, with R = ceil(C / columns).
  """
  towers, k, _, _, count = kernels.shape
  cols = min(columns, count)
  rows = math.ceil(count / cols)
  pixels = np.round(255 * normalize_kernels(kernels)).astype(np.uint8)
  pixels = np.moveaxis(pixels, -1, 1)                      # (T, C, k, k, 3)
  pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
  blank = np.full((rows * cols - count,) + pixels.shape[2:], BACKGROUND, np.uint8)
  gap = np.full((TOWER_GAP, cols * (k * scale + pad) + pad, 3), BACKGROUND, np.uint8)
  parts = []
  for tower in range(towers):
    cells = np.concatenate([pixels[tower], blank]).reshape((rows, cols) + pixels.shape[2:])
    parts += [gap, tile(cells, pad)] if parts else [tile(cells, pad)]
  return np.concatenate(parts)


def labelled_kernel_grid(kernels: np.ndarray, **grid) -> np.ndarray:
  """kernel_grid with LABEL_WIDTH more pixels on the left naming each tower's rows."""
  image = kernel_grid(kernels, **grid)
  towers = kernels.shape[0]
  height = (image.shape[0] - (towers - 1) * TOWER_GAP) // towers  # of one tower's rows
  canvas = Image.fromarray(np.concatenate(
      [np.full((image.shape[0], LABEL_WIDTH, 3), BACKGROUND, np.uint8), image], axis=1))
  draw = ImageDraw.Draw(canvas)
  for tower in range(towers):
    text = f'tower {tower + 1}'
    left, top, right, bottom = draw.textbbox((0, 0), text)  # centred by hand: any PIL font
    middle = tower * (height + TOWER_GAP) + height // 2
    draw.text(((LABEL_WIDTH - right - left) // 2, middle - (bottom + top) // 2), text,
              fill=LABEL_COLOR)
  return np.asarray(canvas)


def _framed(image: np.ndarray, color, border: int) -> np.ndarray:
  """The image inside a frame of `border` pixels of `color`."""
  h, w = image.shape[:2]
  framed = np.empty((h + 2 * border, w + 2 * border, 3), np.uint8)
  framed[:] = color
  framed[border:border + h, border:border + w] = image
  return framed


def neighbour_grid(queries: np.ndarray, neighbours: np.ndarray, same_label: np.ndarray,
                   border: int = BORDER, pad: int = PAD) -> np.ndarray:
  """Figure 4: each query (first column) with its nearest training images, one row each.

  queries uint8 (K, S, S, 3), neighbours uint8 (K, n, S, S, 3), same_label bool (K, n).
  Every image gets a frame of `border` pixels: dark for the query, green for a neighbour
  of the query's class, red for another class. The image is
  K*(S+2*border+pad)+pad high and (n+1)*(S+2*border+pad)+pad wide.
  """
  rows = []
  for query, row, same in zip(queries, neighbours, same_label):
    cells = [_framed(query, QUERY_COLOR, border)]
    cells += [_framed(image, SAME_LABEL_COLOR if match else OTHER_LABEL_COLOR, border)
              for image, match in zip(row, same)]
    rows.append(np.stack(cells))
  return tile(np.stack(rows), pad)


def curve_data(workdir: str) -> dict[str, np.ndarray]:
  """What learning_curves plots for one run, each step once (a resumed run's last line wins).

  Keys: epoch, loss, learning_rate (training log lines); loss_epoch (the middle of the
  steps each loss line averages: a line logged at step s after one at step p stands for
  (p + s) / 2, so a short last window is not drawn ahead of the others, as a false dip);
  eval_epoch, top1_error, top5_error (evaluations, in %); drops (epochs where the
  learning rate fell to a fifth or less of the previous line's: the paper's divisions by
  10, not a smooth decay).
  """
  records = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  train = [r for r in records if 'loss' in r]
  evals = [r for r in records if 'top1' in r]
  column = lambda rows, key: np.array([r[key] for r in rows], np.float64)
  rates = column(train, 'learning_rate')
  epochs = column(train, 'epoch')
  steps = column(train, 'step')
  middles = (steps + np.concatenate([[0.0], steps[:-1]])) / 2
  loss_epochs = np.divide(epochs * middles, steps, out=np.zeros_like(epochs), where=steps > 0)
  return {'epoch': epochs, 'loss': column(train, 'loss'), 'loss_epoch': loss_epochs,
          'learning_rate': rates,
          'eval_epoch': column(evals, 'epoch'),
          'top1_error': 100 * (1 - column(evals, 'top1')),
          'top5_error': 100 * (1 - column(evals, 'top5')),
          'drops': epochs[1:][rates[1:] < 0.2 * rates[:-1]]}


@functools.cache
def _font_characters() -> frozenset[int]:
  """The characters of the font matplotlib draws text with (DejaVu Sans unless configured)."""
  path = font_manager.findfont(font_manager.FontProperties())
  return frozenset(ft2font.FT2Font(path).get_charmap())


def drawable(text: str) -> str:
  """text with each character the font lacks written as its escape (\\u5b66).

  Labels come from workdir names: matplotlib would draw a CJK character, say, as a box and
  warn about each one.
  """
  characters = _font_characters()
  return ''.join(c if ord(c) in characters else c.encode('unicode_escape').decode()
                 for c in text)


def learning_curves(workdirs: Sequence[str], path: str,
                    labels: Sequence[str] | None = None) -> str:
  """Loss, top-1/top-5 error and learning rate against epochs; marks learning-rate drops.

  Several runs share the axes (ablations side by side), labelled by `labels` or by the
  workdirs' names; the legend gives each run's last error.
  """
  labels = [drawable(label) for label in
            labels or [os.path.basename(os.path.normpath(w)) for w in workdirs]]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for workdir, label in zip(workdirs, labels):
    data = curve_data(workdir)
    line, = axes[0].plot(data['loss_epoch'], data['loss'], label=label)
    color = line.get_color()
    for key, style, name in (('top1_error', 'o-', 'top-1'), ('top5_error', 's--', 'top-5')):
      last = f' ({data[key][-1]:.1f}%)' if len(data[key]) else ''
      axes[1].plot(data['eval_epoch'], data[key], style, color=color,
                   label=f'{label} {name}{last}')
    axes[2].plot(data['epoch'], data['learning_rate'], color=color, label=label)
    for epoch in data['drops']:
      for ax in axes:
        ax.axvline(epoch, color=color, alpha=0.3, linestyle=':')
  axes[0].set(xlabel='epoch', ylabel='training loss', title='Loss', yscale='log')
  axes[1].set(xlabel='epoch', ylabel='error (%)', title='Evaluation error')
  axes[2].set(xlabel='epoch', ylabel='learning rate', title='Learning rate (dotted: drops)',
              yscale='log')
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
