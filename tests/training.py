"""Small training runs on the demo ImageNet, shared by the training tests."""

import dataclasses

from alexnet_jax import model as model_lib
from alexnet_jax import optimizer
from alexnet_jax import train
from tests import meshes

MODEL = model_lib.ModelConfig(num_classes=1000, image_size=67, width=0.125, init='he')
OPTIMIZER = optimizer.OptimizerConfig(learning_rate=0.001, schedule='constant')
LOOP = train.TrainConfig(batch_size=8, num_train_steps=6, eval_every_steps=3,
                         checkpoint_every_steps=2, log_every_steps=1, seed=0)


def data(demo, **overrides):
  return demo.config(image_size=MODEL.image_size, **overrides)


def run(demo, workdir, shape=(1, 1), model=MODEL, opt=OPTIMIZER, allow_batch_change=False,
        **loop):
  """Trains on the demo data in workdir; returns the last evaluation."""
  return train.train_and_evaluate(model, data(demo), opt, dataclasses.replace(LOOP, **loop),
                                  meshes.mesh(*shape), str(workdir),
                                  allow_batch_change=allow_batch_change)
