"""Small training runs on the demo ImageNet, shared by the training tests.

They read the stream whose order is known without the input pipeline (tests/stream.py),
so what each step trained on can be checked against the files themselves.
"""

import dataclasses

from alexnet_jax import config as config_lib
from alexnet_jax import train
from tests import meshes
from tests import stream

MODEL = config_lib.ModelConfig(num_classes=1000, image_size=67, width=0.125, init='he')
OPTIMIZER = config_lib.OptimizerConfig(learning_rate=0.001, schedule='constant')
LOOP = config_lib.TrainConfig(batch_size=8, num_train_steps=6, eval_every_steps=3,
                              checkpoint_every_steps=2, log_every_steps=1, seed=0)


def data(demo, **overrides):
  return demo.config(image_size=MODEL.image_size, **{**stream.KNOWN_ORDER, **overrides})


def run(demo, workdir, shape=(1, 1), model=MODEL, opt=OPTIMIZER, data_config=None, **loop):
  """Trains on the demo data (or data_config) in workdir; returns the last evaluation."""
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  loop, mesh = dataclasses.replace(LOOP, **loop), meshes.mesh(*shape)
  inputs = input_pipeline.training_input(data_config or data(demo), loop.batch_size,
                                         loop.eval_batch, mesh, str(workdir))
  return train.train_and_evaluate(model, opt, loop, mesh, str(workdir), inputs)
