"""Command-line flags and the configs built from them.

Flags are parsed by absl in main.py; `model_config()` and `mesh_shape()` turn them into
the frozen configs the rest of the code takes, raising ValueError (with the fix) for any
combination that cannot run, before anything is compiled or read.
"""

from __future__ import annotations

import math
import os

from absl import flags

from alexnet_jax import data_config as data_config_lib
from alexnet_jax import distributed
from alexnet_jax import errors
from alexnet_jax import model as model_lib
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import parallel
from alexnet_jax import train

MODES = ('train', 'eval', 'predict', 'summary', 'benchmark', 'visualize')

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

# Processes.
DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', distributed.MODES,
                                'Start jax.distributed? auto: when --num_processes is set or '
                                'in a SLURM job step of several tasks; on: always (TPU VM pods); '
                                'off: never.')
COORDINATOR_ADDRESS = flags.DEFINE_string('coordinator_address', None,
                                          'host:port of process 0 (with --num_processes).')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process: 0..num_processes-1.')
HEARTBEAT_TIMEOUT = flags.DEFINE_integer('heartbeat_timeout', 100,
                                         'Seconds without a heartbeat after which a process '
                                         'counts as dead and the others stop with an error.')
INITIALIZATION_TIMEOUT = flags.DEFINE_integer('initialization_timeout', 300,
                                              'Seconds to wait for every process to join.')

# Data.
DATASET = flags.DEFINE_string('dataset', 'imagenet2012', 'Any TFDS image-classification dataset.')
DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: TFDS\'s own).')
MANUAL_DIR = flags.DEFINE_string('manual_dir', None,
                                 'Where ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar lie.')
DEMO_DATA = flags.DEFINE_bool('demo_data', False, 'Write the built-in demo ImageNet tars into '
                              '--manual_dir first (if they are not there yet).')
TRAIN_SPLIT = flags.DEFINE_string('train_split', 'train', 'TFDS split string, e.g. train[:90%].')
EVAL_SPLIT = flags.DEFINE_string('eval_split', 'validation', 'TFDS split string.')
AUGMENT = flags.DEFINE_enum('augment', 'paper', data_config_lib.AUGMENTS,
                            'paper: 256 square, random crop, flip, PCA noise.')
EVAL_CROPS = flags.DEFINE_integer('eval_crops', 1, '1 (centre) or 10 (the paper\'s).')
MEAN = flags.DEFINE_enum('mean', 'channel', data_config_lib.MEANS,
                         'Subtract the per-channel mean or the per-pixel mean image.')
PCA_STD = flags.DEFINE_float('pca_std', 0.1, 'Std of the PCA colour noise; 0 turns it off.')
STANDARDIZE = flags.DEFINE_bool('standardize', False, 'Also divide the input by the per-channel '
                                'std (the paper does not; He init needs it).')
SHUFFLE_BUFFER = flags.DEFINE_integer('shuffle_buffer', 10_000, 'Examples in the shuffle buffer.')

# Optimizer.
LEARNING_RATE = flags.DEFINE_float('learning_rate', 0.01, 'Base learning rate (paper: 0.01).')
MOMENTUM = flags.DEFINE_float('momentum', 0.9, 'Momentum (paper: 0.9).')
WEIGHT_DECAY = flags.DEFINE_float('weight_decay', 5e-4, 'Weight decay (paper: 0.0005).')
DECAY_BIASES = flags.DEFINE_bool('decay_biases', False, 'Also decay biases.')
SCHEDULE = flags.DEFINE_enum('schedule', 'plateau', optimizer_lib.SCHEDULES,
                             'plateau: /10 when eval error stops improving (paper).')
LINEAR_SCALING = flags.DEFINE_bool('linear_scaling', False, 'Learning rate x batch / 128.')
WARMUP_STEPS = flags.DEFINE_integer('warmup_steps', 0, 'cosine: linear warm-up steps.')
LR_STEP_EVERY = flags.DEFINE_integer('lr_step_every', 0, 'step: divide by 10 every N steps.')
PLATEAU_PATIENCE = flags.DEFINE_integer('plateau_patience', 1,
                                        'plateau: evaluations without improvement before a drop.')
MAX_DROPS = flags.DEFINE_integer('max_drops', 3, 'plateau: at most this many drops.')

# Loop.
NUM_EPOCHS = flags.DEFINE_float('num_epochs', 90.0, 'Training epochs.')
NUM_TRAIN_STEPS = flags.DEFINE_integer('num_train_steps', 0, 'Wins over --num_epochs when > 0.')
EVAL_EVERY_STEPS = flags.DEFINE_integer('eval_every_steps', 0, '0: every epoch.')
CHECKPOINT_EVERY_STEPS = flags.DEFINE_integer('checkpoint_every_steps', 1000, 'Save every N steps.')
LOG_EVERY_STEPS = flags.DEFINE_integer('log_every_steps', 50, 'Progress line every N steps.')
KEEP_CHECKPOINTS = flags.DEFINE_integer('keep_checkpoints', 3,
                                        'Newest checkpoints kept (the best is kept too).')
EVAL_BATCH_SIZE = flags.DEFINE_integer('eval_batch_size', 0, '0: --batch_size.')
PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 0, 'Write a profiler trace of N steps.')
CHECKPOINT_STEP = flags.DEFINE_integer('checkpoint_step', None, 'eval/predict: this step.')
IMAGE = flags.DEFINE_list('image', [], 'predict: image files.')

# Benchmark.
BENCHMARK_STEPS = flags.DEFINE_integer('benchmark_steps', 10, 'Steps per timed window.')
BENCHMARK_REPEATS = flags.DEFINE_integer('benchmark_repeats', 5, 'Timed windows (median taken).')
PEAK_TFLOPS = flags.DEFINE_float('peak_tflops', None, 'Device peak for MFU (default: a table '
                                 'of known chips).')


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
  for flag in (BATCH_SIZE, EVAL_BATCH_SIZE):
    if flag.value and (flag.value < 1 or flag.value % shape.data):
      raise ValueError(f'--{flag.name}={flag.value} must be a positive multiple of the data '
                       f'axis ({shape.data}) so every data shard gets the same batch.')
  if not BATCH_SIZE.value:
    raise ValueError('--batch_size must be positive.')
  return shape


def process_config() -> distributed.ProcessConfig:
  config = distributed.ProcessConfig(
      mode=DISTRIBUTED.value, coordinator_address=COORDINATOR_ADDRESS.value,
      num_processes=NUM_PROCESSES.value, process_id=PROCESS_ID.value,
      heartbeat_timeout=HEARTBEAT_TIMEOUT.value,
      initialization_timeout=INITIALIZATION_TIMEOUT.value)
  config.validate()
  return config


def data_config() -> data_config_lib.DataConfig:
  config = data_config_lib.DataConfig(
      dataset=DATASET.value, data_dir=DATA_DIR.value, manual_dir=MANUAL_DIR.value,
      train_split=TRAIN_SPLIT.value, eval_split=EVAL_SPLIT.value, image_size=IMAGE_SIZE.value,
      augment=AUGMENT.value, eval_crops=EVAL_CROPS.value, mean=MEAN.value, pca_std=PCA_STD.value,
      standardize=STANDARDIZE.value,
      shuffle_buffer=SHUFFLE_BUFFER.value, seed=SEED.value)
  config.validate()
  return config


def optimizer_config() -> optimizer_lib.OptimizerConfig:
  config = optimizer_lib.OptimizerConfig(
      learning_rate=LEARNING_RATE.value, momentum=MOMENTUM.value,
      weight_decay=WEIGHT_DECAY.value, decay_biases=DECAY_BIASES.value, schedule=SCHEDULE.value,
      linear_scaling=LINEAR_SCALING.value, warmup_steps=WARMUP_STEPS.value,
      step_every=LR_STEP_EVERY.value, plateau_patience=PLATEAU_PATIENCE.value,
      max_drops=MAX_DROPS.value)
  config.validate()
  return config


def train_config() -> train.TrainConfig:
  config = train.TrainConfig(
      batch_size=BATCH_SIZE.value, num_epochs=NUM_EPOCHS.value,
      num_train_steps=NUM_TRAIN_STEPS.value, eval_every_steps=EVAL_EVERY_STEPS.value,
      checkpoint_every_steps=CHECKPOINT_EVERY_STEPS.value, log_every_steps=LOG_EVERY_STEPS.value,
      keep_checkpoints=KEEP_CHECKPOINTS.value, eval_batch_size=EVAL_BATCH_SIZE.value,
      profile_steps=PROFILE_STEPS.value, seed=SEED.value)
  for name in ('checkpoint_every_steps', 'log_every_steps', 'keep_checkpoints'):
    if getattr(config, name) < 1:
      raise ValueError(f'--{name} must be at least 1, got {getattr(config, name)}.')
  for name in ('num_train_steps', 'eval_every_steps', 'eval_batch_size', 'profile_steps'):
    if getattr(config, name) < 0:
      raise ValueError(f'--{name} must be >= 0 (0: the default), got {getattr(config, name)}.')
  if config.num_epochs <= 0 and not config.num_train_steps:
    raise ValueError(f'--num_epochs must be positive, got {config.num_epochs}.')
  return config


# ----------------------------------------------------------------------------------
# Issue 12: resuming with another batch size; checks of values no config catches.

ALLOW_BATCH_CHANGE = flags.DEFINE_bool(
    'allow_batch_change', False, 'Resume a checkpoint trained with another --batch_size: the '
    'input continues after the examples it has seen (without this flag such a resume is '
    'refused, since counting steps would replay or skip data).')


def check_flag_values() -> None:
  """UserError for what the configs cannot see: NaN or infinite numbers, --cpu_devices < 1,
  a file where a directory is expected. Called first, before any config is built."""
  for name, value in sorted(flags.FLAGS.flag_values_dict().items()):
    if isinstance(value, float) and not math.isfinite(value):
      raise errors.UserError(f'--{name}={value} must be a finite number.')
  if CPU_DEVICES.value is not None and CPU_DEVICES.value < 1:
    raise errors.UserError(f'--cpu_devices must be at least 1, got {CPU_DEVICES.value}.')
  for flag in (WORKDIR, DATA_DIR, MANUAL_DIR):
    if flag.value and os.path.exists(flag.value) and not os.path.isdir(flag.value):
      raise errors.UserError(f'--{flag.name}={flag.value} is a file; it must be a directory.')
