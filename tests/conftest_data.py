"""Shared data fixtures: the demo ImageNet, prepared once per session through TFDS.

Registered for every test module by conftest.py (`pytest_plugins`); the
dataset is built once per session whichever module asks first, with the stores of
squares the tests read (STORES).
"""

from __future__ import annotations

import dataclasses
import io
import logging

import pytest

from alexnet_jax import config as config_lib
from alexnet_jax.data import demo_data

IMAGES_PER_CLASS = 12       # 8 classes: 96 regular images + 4 odd ones
TRAIN_EXAMPLES = 8 * IMAGES_PER_CLASS + 4
IMAGE_SIZE = 24             # crops the tests' pipelines make; resize_size(24) == 27
TRAIN_IMAGE_SIZE = 67       # the training tests' net (tests/training.py); resize_size(67) == 77
# The stores prepared with the demo: the pipeline tests' (27 px) and the training tests'.
STORES = ((IMAGE_SIZE, 'jpeg'), (IMAGE_SIZE, 'raw'), (TRAIN_IMAGE_SIZE, 'jpeg'))

_CACHE = {}


@dataclasses.dataclass(frozen=True)
class Demo:
  manual_dir: str
  data_dir: str
  summary: demo_data.DemoSummary
  skipped: list[str]          # what prepare() returned
  log: str                    # what prepare() logged

  def config(self, **overrides) -> config_lib.DataConfig:
    """The demo's data config; the full-size input unless `store` says otherwise."""
    base = dict(data_dir=self.data_dir, manual_dir=self.manual_dir,
                train_split='train[:90%]', eval_split='train[90%:]',
                image_size=IMAGE_SIZE, shuffle_buffer=32, seed=0, store='none')
    base.update(overrides)
    return config_lib.DataConfig(**base)


@pytest.fixture(scope='session')
def demo(tmp_path_factory) -> Demo:
  """Tiny demo ImageNet (40..72 px images, oddities included) prepared by the real builder.

  With its stores of squares (STORES), written from it by square_store.
  """
  if 'demo' not in _CACHE:
    from alexnet_jax.data import dataset  # pylint: disable=import-outside-toplevel
    root = tmp_path_factory.mktemp('demo_imagenet')
    manual_dir, data_dir = str(root / 'manual'), str(root / 'tfds')
    summary = demo_data.write_demo_imagenet(manual_dir, IMAGES_PER_CLASS, seed=0,
                                            image_size=(40, 72), val_images=4)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    absl_logger = logging.getLogger('absl')
    absl_logger.addHandler(handler)
    previous = absl_logger.level
    absl_logger.setLevel(logging.INFO)
    try:
      skipped = dataset.prepare(config_lib.DataConfig(
          data_dir=data_dir, manual_dir=manual_dir, store='none'))
    finally:
      absl_logger.removeHandler(handler)
      absl_logger.setLevel(previous)
    for image_size, store in STORES:
      dataset.prepare(config_lib.DataConfig(data_dir=data_dir, image_size=image_size,
                                                    store=store))
    _CACHE['demo'] = Demo(manual_dir, data_dir, summary, skipped, stream.getvalue())
  return _CACHE['demo']
