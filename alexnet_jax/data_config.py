"""What the input pipeline reads and how it augments: a TF-free config.

Kept apart from `input_pipeline` so that flags can be validated, and synthetic-data
runs configured, without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses

AUGMENTS = ('paper', 'inception', 'none')
EVAL_CROPS = (1, 10)
MEANS = ('channel', 'pixel')


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The dataset, its splits, and the paper's preprocessing choices."""
  dataset: str = 'imagenet2012'         # any TFDS image-classification dataset
  data_dir: str | None = None           # TFDS data dir (None: TFDS's default)
  manual_dir: str | None = None         # holds ILSVRC2012_img_train.tar / _val.tar
  train_split: str = 'train'            # TFDS split syntax, e.g. 'train[:90%]'
  eval_split: str = 'validation'
  image_size: int = 227                 # side of the crop the model sees
  augment: str = 'paper'                # 'paper', 'inception' or 'none'
  eval_crops: int = 1                   # 1 (centre) or 10 (paper: corners + centre, mirrored)
  mean: str = 'channel'                 # 'channel' (cuda-convnet2's) or 'pixel' (paper's mean image)
  pca_std: float = 0.1                  # std of the PCA colour noise; 0 turns it off
  standardize: bool = False             # also divide by the per-channel std (He init)
  shuffle_buffer: int = 10_000          # encoded examples (~110 kB each on ImageNet)
  seed: int = 0

  @property
  def resize_size(self) -> int:
    return resize_size(self.image_size)

  def validate(self) -> None:
    """Raises ValueError, with the fix, for settings the pipeline cannot run."""
    if self.augment not in AUGMENTS:
      raise ValueError(f'augment must be one of {AUGMENTS}, got {self.augment!r}.')
    if self.eval_crops not in EVAL_CROPS:
      raise ValueError(f'eval_crops must be 1 (centre) or 10 (the paper\'s), '
                       f'got {self.eval_crops}.')
    if self.mean not in MEANS:
      raise ValueError(f'mean must be one of {MEANS}, got {self.mean!r}.')
    if self.image_size < 8:
      raise ValueError(f'image_size must be at least 8, got {self.image_size}.')
    if self.pca_std < 0:
      raise ValueError(f'pca_std must be >= 0, got {self.pca_std}.')
    if self.shuffle_buffer < 1:
      raise ValueError(f'shuffle_buffer must be positive, got {self.shuffle_buffer}.')
    if not 0 <= self.seed < 2**31:
      raise ValueError(f'seed must be in [0, 2**31), got {self.seed}.')


def resize_size(image_size: int) -> int:
  """The side S of the square the crops are taken from (the paper's 256).

  The paper crops 224 (or 227) from 256. Crops of 224..256 keep 256; any other crop
  size scales the 256 in the same proportion as 224, round(image_size * 256 / 224),
  so a small demo net sees the same relative translations (67 -> 77, 99 -> 113).
  """
  if 224 <= image_size <= 256:
    return 256
  return round(image_size * 256 / 224)
