"""Command-line flags and the configs built from them.

Flags are parsed by absl in main.py; `model_config()` and `mesh_shape()` turn them into
the frozen configs the rest of the code takes, raising ValueError (with the fix) for any
combination that cannot run, before anything is compiled or read.
"""

from __future__ import annotations

from absl import flags

from alexnet_jax import model as model_lib
from alexnet_jax import parallel

MODES = ('train', 'eval', 'predict', 'summary', 'benchmark')

_MODE = flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for everything a run writes.')
SEED = flags.DEFINE_integer('seed', 0, 'Seed of parameters, dropout and data order.')

# Model.
TOWERS = flags.DEFINE_integer('towers', 2, "2: the paper's net; 1: its one-GPU ablation.")
NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Output classes.')
IMAGE_SIZE = flags.DEFINE_integer('image_size', 227,
                                  'Input side; 224 is padded (0, 3) like cuda-convnet.')
WIDTH = flags.DEFINE_float('width', 1.0, 'Multiplies every layer width (small variants).')
LRN = flags.DEFINE_bool('lrn', True, 'Local response normalization after conv1, conv2.')
OVERLAPPING_POOL = flags.DEFINE_bool('overlapping_pool', True,
                                     'Max-pool 3x3 stride 2 (paper) or 2x2 stride 2.')
DROPOUT_RATE = flags.DEFINE_float('dropout_rate', 0.5, 'Dropout after fc6 and fc7.')
DTYPE = flags.DEFINE_enum('dtype', 'float32', model_lib.DTYPES,
                          'Compute dtype; parameters stay float32.')
INIT = flags.DEFINE_enum('init', 'paper', model_lib.INIT_SCHEMES,
                         "paper: N(0,0.01), biases 1; caffe: bvlc_alexnet's; he: He-normal.")
CROSSINGS = flags.DEFINE_list('crossings', list(model_lib.PAPER_CROSSINGS),
                              'Layers that read every tower (the paper: conv3,fc6,fc7,fc8).')

# Devices.
MESH = flags.DEFINE_string('mesh', None, 'data:D,tower:T. Default: every device, tower=2 '
                           'when the model has two towers and the device count is even.')
CPU_DEVICES = flags.DEFINE_integer('cpu_devices', None,
                                   'Split the CPU into this many JAX devices (try meshes '
                                   'on a laptop). Only when running on the CPU.')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')


def mode() -> str:
  return _MODE.value


def model_config() -> model_lib.ModelConfig:
  config = model_lib.ModelConfig(
      towers=TOWERS.value, num_classes=NUM_CLASSES.value, image_size=IMAGE_SIZE.value,
      width=WIDTH.value, lrn=LRN.value, overlapping_pool=OVERLAPPING_POOL.value,
      dropout_rate=DROPOUT_RATE.value, dtype=DTYPE.value, init=INIT.value,
      crossings=tuple(CROSSINGS.value))
  config.validate()
  return config


def mesh_shape(num_devices: int, towers: int) -> parallel.MeshShape:
  """The --mesh flag (or the default) checked against the devices and the model."""
  shape = (parallel.parse_mesh(MESH.value) if MESH.value
           else parallel.default_mesh_shape(num_devices, towers))
  parallel.check_mesh_shape(shape, num_devices, towers)
  if BATCH_SIZE.value < 1 or BATCH_SIZE.value % shape.data:
    raise ValueError(f'--batch_size={BATCH_SIZE.value} must be a positive multiple of the '
                     f'data axis ({shape.data}) so every data shard gets the same batch.')
  return shape
