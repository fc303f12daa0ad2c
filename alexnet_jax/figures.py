"""PNG figures: learning curves from metrics.jsonl (one or several runs on one plot)."""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from alexnet_jax import metrics as metrics_lib


def learning_curves(workdirs: Sequence[str], path: str) -> str:
  """Loss, top-1/top-5 error and learning rate against epochs; marks learning-rate drops."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for workdir in workdirs:
    records = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
    label = os.path.basename(os.path.normpath(workdir))
    train = [r for r in records if 'loss' in r]
    evals = [r for r in records if 'top1' in r]
    line, = axes[0].plot([r['epoch'] for r in train], [r['loss'] for r in train], label=label)
    color = line.get_color()
    axes[1].plot([r['epoch'] for r in evals], [100 * (1 - r['top1']) for r in evals],
                 'o-', color=color, label=f'{label} top-1')
    axes[1].plot([r['epoch'] for r in evals], [100 * (1 - r['top5']) for r in evals],
                 's--', color=color, label=f'{label} top-5')
    axes[2].plot([r['epoch'] for r in train], [r['learning_rate'] for r in train], color=color,
                 label=label)
    for before, after in zip(train, train[1:]):
      if after['learning_rate'] < 0.5 * before['learning_rate']:
        for ax in axes:
          ax.axvline(after['epoch'], color=color, alpha=0.3, linestyle=':')
  axes[0].set(xlabel='epoch', ylabel='training loss', title='Loss')
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
