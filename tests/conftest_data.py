"""Shared data fixtures: the demo ImageNet, prepared once per session through TFDS.

Registered for every test module by conftest.py (`pytest_plugins`); the
dataset is built once per session whichever module asks first.
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

_CACHE = {}


@dataclasses.dataclass(frozen=True)
class Demo:
  manual_dir: str
  data_dir: str
  summary: demo_data.DemoSummary
  skipped: list[str]          # what prepare() returned
  log: str                    # what prepare() logged

  def config(self, **overrides) -> config_lib.DataConfig:
    base = dict(data_dir=self.data_dir, manual_dir=self.manual_dir,
                train_split='train[:90%]', eval_split='train[90%:]',
                image_size=IMAGE_SIZE, shuffle_buffer=32, seed=0)
    base.update(overrides)
    return config_lib.DataConfig(**base)


@pytest.fixture(scope='session')
def demo(tmp_path_factory) -> Demo:
  """Tiny demo ImageNet (40..72 px images, oddities included) prepared by the real builder."""
  if 'demo' not in _CACHE:
    from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
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
      skipped = input_pipeline.prepare(config_lib.DataConfig(data_dir=data_dir,
                                                              manual_dir=manual_dir))
    finally:
      absl_logger.removeHandler(handler)
      absl_logger.setLevel(previous)
    _CACHE['demo'] = Demo(manual_dir, data_dir, summary, skipped, stream.getvalue())
  return _CACHE['demo']
