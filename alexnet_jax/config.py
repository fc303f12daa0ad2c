"""The experiment: one frozen dataclass per concern, and every rule they must obey.

A leaf module: it imports nothing that loads orbax or TensorFlow, so a flagfile can be
checked in a second. `alexnet_jax.flags` defines the command-line flags with these
defaults; `main.py` alone reads them and builds an `Experiment`; every other module is
handed the configs it needs. `Experiment.validate()` checks each config and every rule
across them, and `Experiment.mesh_shape()` the mesh against the devices, before anything
is compiled or read. A setting that cannot run raises `UserError` with the fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from alexnet_jax import geometry


class UserError(ValueError):
  """Something the user can fix (a flag, a file, a dataset): one line, no traceback."""


MODES = ('train', 'eval', 'predict', 'summary', 'benchmark', 'visualize', 'prepare', 'import')
# The modes that read or write a workdir's run (--workdir needed).
DATA_MODES = ('train', 'eval', 'predict', 'visualize', 'import')


# ----------------------------------------------------------------------------------
# The net.

PAPER_CROSSINGS = ('conv3', 'fc6', 'fc7', 'fc8')
CROSSABLE = ('conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
INIT_SCHEMES = ('paper', 'caffe', 'he')
DTYPES = ('float32', 'bfloat16')
# Caffe's bvlc_alexnet (the released two-tower net) departs from the paper in these:
LRN_VARIANTS = ('paper', 'caffe')            # constants and reach in model.LRN
CONV1_PADDINGS = ('cuda-convnet', 'valid')   # see geometry.feature_maps
POOL_ROUNDINGS = ('floor', 'ceil')           # see geometry.pooled
INPUT_CONVENTIONS = ('paper', 'caffe')       # see mean_image.normalizer_for
# How the net is laid over the devices (strategies.py, docs/PARALLELISM.md): the paper's
# towers (2012), Krizhevsky's 2014 hybrid, data parallelism, fully sharded data parallelism.
PARALLELISMS = ('towers', 'hybrid', 'data', 'fsdp')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that decides the network's shape and numerics, and how it is laid over the
  devices (`parallelism`: every function that places or runs the net reads it from here;
  checkpoints ignore it, see checkpoints.NET_FIELDS)."""
  towers: int = 2                       # 2: the paper's net; 1: its one-GPU ablation
  num_classes: int = 1000
  image_size: int = 227                 # 224 is padded (0, 3) like cuda-convnet
  width: float = 1.0                    # multiplies every layer's channels (tests, CPU demo)
  lrn: bool = True
  overlapping_pool: bool = True         # 3x3 stride 2 (paper) or 2x2 stride 2
  dropout_rate: float = 0.5
  dtype: str = 'float32'                # compute dtype; parameters stay float32
  init: str = 'paper'                   # 'paper', 'caffe' or 'he' (see model.layer_init)
  crossings: tuple[str, ...] = PAPER_CROSSINGS  # layers that read every tower
  # paper: k=2, alpha not divided by n, within each tower; caffe: k=1, alpha / n, across
  # all channels of the layer (a tower's edge channels read the other tower's).
  lrn_variant: str = 'paper'
  conv1_padding: str = 'cuda-convnet'   # or 'valid' (Caffe's): see geometry.feature_maps
  pool_rounding: str = 'floor'          # or 'ceil' (Caffe's): see geometry.pooled
  # The input the weights expect: paper: RGB minus the run's mean; caffe: BGR minus Caffe's
  # mean pixel (both on 0..255). Read by the input pipeline, not by the net.
  input_convention: str = 'paper'
  parallelism: str = 'towers'           # see PARALLELISMS

  def validate(self) -> None:
    if self.towers not in (1, 2):
      raise UserError(f'--towers must be 1 or 2, got {self.towers}: 2 is the paper\'s net, '
                      '1 its one-GPU ablation.')
    _one_of('dtype', self.dtype, DTYPES)
    _one_of('init', self.init, INIT_SCHEMES)
    _one_of('lrn_variant', self.lrn_variant, LRN_VARIANTS)
    _one_of('conv1_padding', self.conv1_padding, CONV1_PADDINGS)
    _one_of('pool_rounding', self.pool_rounding, POOL_ROUNDINGS)
    _one_of('input_convention', self.input_convention, INPUT_CONVENTIONS)
    _one_of('parallelism', self.parallelism, PARALLELISMS)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f'--dropout_rate must be in [0, 1), got {self.dropout_rate}.')
    if not self.width > 0:
      raise UserError(f'--width must be positive, got {self.width}.')
    if self.num_classes < 2:
      raise UserError(f'--num_classes must be at least 2, got {self.num_classes}.')
    if not set(self.crossings) <= set(CROSSABLE) or 'fc8' not in self.crossings:
      raise UserError(f'--crossings must name layers among {list(CROSSABLE)} and include fc8 '
                      f'(the classifier reads both towers), got {",".join(self.crossings)}.')
    smallest = geometry.smallest_image_size(self)
    if self.image_size < smallest:
      raise UserError(f'--image_size={self.image_size} is too small: the feature map '
                      f'vanishes before fc6. Use at least {smallest}.')


# ----------------------------------------------------------------------------------
# Devices and processes.

DATA, TOWER = 'data', 'tower'
DISTRIBUTED_MODES = ('auto', 'on', 'off')
# Where the coordination service runs: in process 0 (JAX's way), or in a process of its own
# (launch.sh local), so that losing any training process, process 0 included, is survivable.
COORDINATION_SERVICES = ('process0', 'separate')


@dataclasses.dataclass(frozen=True)
class MeshShape:
  data: int
  tower: int

  def __str__(self) -> str:
    return f'data:{self.data},tower:{self.tower}'


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The ('data', 'tower') mesh asked for, and how many devices to split the CPU into."""
  mesh: str | None = None               # 'data:D,tower:T'; None: every device (see shape)
  cpu_devices: int | None = None

  def parsed(self) -> MeshShape | None:
    """The --mesh text as a MeshShape (either order), None when not given."""
    if self.mesh is None:
      return None
    match = re.fullmatch(r'\s*(\w+):(\d+)\s*,\s*(\w+):(\d+)\s*', self.mesh)
    axes = dict(((match[1], int(match[2])), (match[3], int(match[4])))) if match else {}
    if set(axes) != {DATA, TOWER} or min(axes.values()) < 1:
      raise UserError(f'--mesh must look like data:D,tower:T with positive sizes, '
                      f'got {self.mesh!r}.')
    return MeshShape(axes[DATA], axes[TOWER])

  def validate(self) -> None:
    self.parsed()
    if self.cpu_devices is not None and self.cpu_devices < 1:
      raise UserError(f'--cpu_devices must be at least 1, got {self.cpu_devices}.')

  def shape(self, num_devices: int, towers: int, parallelism: str = 'towers') -> MeshShape:
    """--mesh, or one tower per device (as in 2012) when the strategy and the device count
    allow; the other strategies split every device's work over 'data' alone."""
    shape = self.parsed()
    if shape is None:
      tower = 2 if parallelism == 'towers' and towers == 2 and num_devices % 2 == 0 else 1
      shape = MeshShape(num_devices // tower, tower)
    if parallelism != 'towers' and shape.tower > 1:
      raise UserError(f'--parallelism={parallelism} runs every tower on every device: it takes '
                      f'no tower axis; use --mesh=data:{shape.data * shape.tower},tower:1 (or '
                      'leave --mesh out), or --parallelism=towers.')
    if shape.tower not in (1, 2):
      raise UserError(f'the tower axis must be 1 or 2, got {shape.tower}.')
    if shape.tower > towers:
      raise UserError(f'a tower axis of {shape.tower} needs the two-tower model; with '
                      f'--towers={towers} use --mesh=data:{num_devices},tower:1.')
    if shape.data * shape.tower != num_devices:
      raise UserError(f'--mesh={shape} needs {shape.data * shape.tower} devices but '
                      f'{num_devices} are visible; use data * tower = {num_devices}.')
    return shape


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
  """How this process finds the others (all None: let the environment say)."""
  distributed: str = 'auto'             # 'auto', 'on' or 'off'
  coordinator_address: str | None = None  # host:port of process 0
  num_processes: int | None = None
  process_id: int | None = None
  heartbeat_timeout: int = 100          # seconds without a heartbeat: a process is dead
  initialization_timeout: int = 300     # seconds to wait for every process to join
  coordination_service: str = 'process0'  # or 'separate': launch.sh local runs it

  @property
  def explicit(self) -> bool:
    return self.num_processes is not None

  def validate(self) -> None:
    _one_of('distributed', self.distributed, DISTRIBUTED_MODES)
    _one_of('coordination_service', self.coordination_service, COORDINATION_SERVICES)
    named = (self.coordinator_address, self.num_processes, self.process_id)
    if any(value is not None for value in named) and None in named:
      raise UserError('--coordinator_address, --num_processes and --process_id go together: '
                      'set all three (or none, under SLURM or on a TPU VM).')
    if self.explicit and self.distributed == 'off':
      raise UserError('--distributed=off contradicts --num_processes: drop one of them.')
    if self.explicit and not 0 <= self.process_id < self.num_processes:
      raise UserError(f'--process_id must be in 0..{self.num_processes - 1} '
                      f'(--num_processes={self.num_processes}), got {self.process_id}.')
    if self.explicit and ':' not in self.coordinator_address:
      raise UserError(f'--coordinator_address must be host:port, got '
                      f'{self.coordinator_address!r}.')
    if self.coordination_service == 'separate' and not self.explicit:
      raise UserError('--coordination_service=separate needs --coordinator_address, '
                      '--num_processes and --process_id (launch.sh local sets them).')
    if min(self.heartbeat_timeout, self.initialization_timeout) < 1:
      raise UserError('--heartbeat_timeout and --initialization_timeout must be at least 1 s.')


# ----------------------------------------------------------------------------------
# Data.

AUGMENTS = ('paper', 'inception', 'none')
EVAL_CROPS = (1, 10)
MEANS = ('channel', 'pixel')
# jpeg, raw: the prepared store of R x R squares (data/square_store.py), cropped on the
# device; none: the full-size images, decoded and cropped on the host (data/augment.py).
STORES = ('jpeg', 'raw', 'none')


def resize_size(image_size: int) -> int:
  """The side R of the square the crops are taken from (the paper's 256).

  The paper crops 224 (or 227) from 256. Crops of 224..256 keep 256; any other crop
  size scales the 256 in the same proportion as 224, round(image_size * 256 / 224),
  so a small demo net sees the same relative translations (67 -> 77, 99 -> 113).
  """
  if 224 <= image_size <= 256:
    return 256
  return round(image_size * 256 / 224)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The dataset, its splits, and the paper's preprocessing choices.

  `image_size`, `seed` and `input_convention` are not flags of their own:
  `Experiment.from_parts` fills them from the model's and the run's, so they cannot disagree.
  """
  dataset: str = 'imagenet2012'         # any TFDS image-classification dataset
  data_dir: str | None = None           # TFDS data dir (None: TFDS's default)
  manual_dir: str | None = None         # holds ILSVRC2012_img_train.tar / _val.tar
  demo_data: bool = False               # write the demo tars into manual_dir first
  train_split: str = 'train'            # TFDS split syntax, e.g. 'train[:90%]'
  eval_split: str = 'validation'
  augment: str = 'paper'                # 'paper', 'inception' or 'none'
  eval_crops: int = 1                   # 1 (centre) or 10 (paper: corners + centre, mirrored)
  mean: str = 'channel'                 # 'channel' (cuda-convnet2's) or 'pixel' (paper's mean image)
  pca_std: float = 0.1                  # std of the PCA colour noise; 0 turns it off
  standardize: bool = False             # also divide by the per-channel std (He init)
  shuffle_buffer: int = 10_000          # encoded examples (~110 kB each on ImageNet)
  store: str = 'jpeg'                   # 'jpeg', 'raw' (the R x R store) or 'none' (full size)
  store_quality: int = 90               # JPEG quality of the 'jpeg' store
  skip_damaged_records: bool = False    # train past records of the store whose CRC fails
  image_size: int = 227                 # side of the crop the model sees (the model's)
  seed: int = 0                         # the run's seed
  input_convention: str = 'paper'       # the input the model's weights expect (the model's)

  @property
  def resize_size(self) -> int:
    return resize_size(self.image_size)

  def validate(self) -> None:
    _one_of('augment', self.augment, AUGMENTS)
    if self.eval_crops not in EVAL_CROPS:
      raise UserError(f'--eval_crops must be 1 (centre) or 10 (the paper\'s), '
                      f'got {self.eval_crops}.')
    _one_of('mean', self.mean, MEANS)
    if self.image_size < 8:
      raise UserError(f'--image_size must be at least 8, got {self.image_size}.')
    if not self.pca_std >= 0:
      raise UserError(f'--pca_std must be >= 0, got {self.pca_std}.')
    if self.shuffle_buffer < 1:
      raise UserError(f'--shuffle_buffer must be positive, got {self.shuffle_buffer}.')
    if not 0 <= self.seed < 2**31:
      raise UserError(f'--seed must be in [0, 2**31), got {self.seed}.')
    _one_of('store', self.store, STORES)
    if self.store != 'none' and self.augment == 'inception':
      raise UserError('--augment=inception crops random areas of the full-size images: it '
                      'needs --store=none (the store holds only the central R x R squares).')
    if not 1 <= self.store_quality <= 100:
      raise UserError(f'--store_quality must be in 1..100, got {self.store_quality}.')
    if self.input_convention == 'caffe' and (self.mean == 'pixel' or self.standardize):
      raise UserError('--mean=pixel and --standardize contradict the net\'s Caffe input '
                      'convention (BGR minus Caffe\'s mean pixel, which its weights expect): '
                      'drop them.')
    if self.demo_data and not self.manual_dir:
      raise UserError('--demo_data writes the demo tars into --manual_dir: set --manual_dir.')


# ----------------------------------------------------------------------------------
# Optimization and the loop.

SCHEDULES = ('plateau', 'step', 'cosine', 'constant')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 5e-4
  decay_biases: bool = False           # cuda-convnet2 decayed weights only
  schedule: str = 'plateau'            # see SCHEDULES
  linear_scaling: bool = False         # lr * batch / 128 (Goyal et al.)
  warmup_steps: int = 0                # cosine: linear warm-up
  lr_step_every: int = 0               # step: divide by 10 every this many steps
  plateau_patience: int = 1            # plateau: evaluations without improvement
  max_drops: int = 3                   # plateau: the paper divided by 10 three times

  def validate(self) -> None:
    _one_of('schedule', self.schedule, SCHEDULES)
    if not self.learning_rate > 0:
      raise UserError(f'--learning_rate must be positive, got {self.learning_rate}.')
    if not 0 <= self.momentum < 1:
      raise UserError(f'--momentum must be in [0, 1), got {self.momentum}.')
    for name in ('weight_decay', 'warmup_steps', 'max_drops'):
      if not getattr(self, name) >= 0:
        raise UserError(f'--{name} must be >= 0, got {getattr(self, name)}.')
    if self.plateau_patience < 1:
      raise UserError(f'--plateau_patience must be at least 1, got {self.plateau_patience}.')
    if self.schedule == 'step' and self.lr_step_every < 1:
      raise UserError('--schedule=step needs --lr_step_every (steps between drops).')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = 128
  num_epochs: float = 90.0
  num_train_steps: int = 0              # wins over num_epochs when > 0
  eval_every_steps: int = 0             # 0: once per epoch
  checkpoint_every_steps: int = 1000
  log_every_steps: int = 50
  keep_checkpoints: int = 3
  eval_batch_size: int = 0              # 0: batch_size
  profile_steps: int = 0                # trace this many steps (after 5 warm-up steps)
  seed: int = 0                         # parameters, dropout and (through DataConfig) data
  allow_batch_change: bool = False      # resume a checkpoint of another batch size
  init_from: str | None = None          # a run (e.g. an imported net) whose parameters start
                                        # this one, when its workdir has no checkpoint yet

  @property
  def eval_batch(self) -> int:
    return self.eval_batch_size or self.batch_size

  def validate(self) -> None:
    if self.batch_size < 1:
      raise UserError(f'--batch_size must be positive, got {self.batch_size}.')
    for name in ('checkpoint_every_steps', 'log_every_steps', 'keep_checkpoints'):
      if getattr(self, name) < 1:
        raise UserError(f'--{name} must be at least 1, got {getattr(self, name)}.')
    for name in ('num_train_steps', 'eval_every_steps', 'eval_batch_size', 'profile_steps'):
      if getattr(self, name) < 0:
        raise UserError(f'--{name} must be >= 0 (0: the default), got {getattr(self, name)}.')
    if not self.num_train_steps and not (0 < self.num_epochs < math.inf):
      raise UserError(f'--num_epochs must be a positive number, got {self.num_epochs}.')


# ----------------------------------------------------------------------------------
# What this run does.


@dataclasses.dataclass(frozen=True)
class RunConfig:
  mode: str = 'train'
  workdir: str | None = None            # everything a run writes
  checkpoint_step: int | None = None    # eval/predict/visualize: this step, not the newest
  image: tuple[str, ...] = ()           # predict: image files
  onnx: str | None = None               # import: Caffe's AlexNet as an ONNX file

  def validate(self) -> None:
    _one_of('mode', self.mode, MODES)
    if self.mode == 'predict' and not self.image:
      raise UserError('--mode=predict needs --image=FILE[,FILE...].')
    if self.mode == 'import' and not self.onnx:
      raise UserError('--mode=import needs --onnx=FILE (bvlc_alexnet from the ONNX Model Zoo).')


BENCHMARKS = ('step', 'input')


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  benchmark: str = 'step'               # 'step': the training step; 'input': the input pipeline
  benchmark_steps: int = 10             # step: steps per timed window
  benchmark_repeats: int = 5            # timed windows (the median is reported)
  peak_tflops: float | None = None      # step: the device's peak for MFU (default: a table)
  benchmark_stores: tuple[str, ...] = ('none', 'jpeg', 'raw')  # input: compared side by side
  benchmark_seconds: float = 10.0       # input: seconds per timed window
  benchmark_quiet: float = 0.0          # input: wait until the CPUs are this idle (0: never)
  benchmark_photos: int = 250           # input without --data_dir: photos written per class

  def validate(self) -> None:
    _one_of('benchmark', self.benchmark, BENCHMARKS)
    if min(self.benchmark_steps, self.benchmark_repeats, self.benchmark_photos) < 1:
      raise UserError('--benchmark_steps, --benchmark_repeats and --benchmark_photos must be '
                      'at least 1.')
    wrong = [store for store in self.benchmark_stores if store not in STORES]
    if wrong or not self.benchmark_stores:
      raise UserError(f'--benchmark_stores must name stores among {", ".join(STORES)}, got '
                      f'{",".join(self.benchmark_stores)!r}.')
    if not self.benchmark_seconds > 0 or not 0 <= self.benchmark_quiet <= 1:
      raise UserError('--benchmark_seconds must be positive and --benchmark_quiet in 0..1.')


@dataclasses.dataclass(frozen=True)
class VisualizeConfig:
  queries: int = 8                      # Figure 4: query images of the eval split
  neighbours: int = 6                   # Figure 4: training images per query (paper: 6)
  max_train_images: int = 10_000        # Figure 4: the training images searched
  figures_dir: str | None = None        # default WORKDIR/figures
  results: bool = False                 # write the results table of `runs` instead
  runs: tuple[str, ...] = ()            # [EXPERIMENT=]WORKDIR of each run
  results_path: str | None = None       # default docs/RESULTS.md
  curves_path: str | None = None        # also plot the runs' learning curves here
  results_note: str = ''                # a paragraph under the table

  def validate(self) -> None:
    if min(self.queries, self.neighbours, self.max_train_images) < 1:
      raise UserError('--queries, --neighbours and --max_train_images must be at least 1.')
    if self.results and not self.runs:
      raise UserError('--results writes the table of --runs=[EXPERIMENT=]WORKDIR,...: set '
                      '--runs.')


@dataclasses.dataclass(frozen=True)
class Experiment:
  model: ModelConfig
  data: DataConfig
  optimizer: OptimizerConfig
  train: TrainConfig
  mesh: MeshConfig
  processes: ProcessConfig
  run: RunConfig
  benchmark: BenchmarkConfig
  visualize: VisualizeConfig

  @classmethod
  def from_parts(cls, **parts) -> 'Experiment':
    """The experiment of these configs; the data pipeline gets the model's input size and
    convention and the run's seed."""
    model, train = parts['model'], parts['train']
    data = dataclasses.replace(parts['data'], image_size=model.image_size, seed=train.seed,
                               input_convention=model.input_convention)
    return cls(**{**parts, 'data': data})

  def validate(self) -> None:
    """Every config's own rules, then those across configs (no device needed)."""
    results_table = self.run.mode == 'visualize' and self.visualize.results  # reads --runs
    if self.run.mode in DATA_MODES and not self.run.workdir and not results_table:
      raise UserError(f'--mode={self.run.mode} needs --workdir (where checkpoints and metrics '
                      'live).')
    for part in dataclasses.fields(self):
      config = getattr(self, part.name)
      for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
          raise UserError(f'--{field.name}={value} must be a finite number.')
      config.validate()
    for flag, path in (('workdir', self.run.workdir), ('data_dir', self.data.data_dir),
                       ('manual_dir', self.data.manual_dir)):
      if path and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f'--{flag}={path} is a file; it must be a directory.')
    if (self.run.mode == 'benchmark' and self.train.profile_steps
        and not self.run.workdir):
      raise UserError('--profile_steps writes its trace into --workdir: set --workdir.')

  def mesh_shape(self, num_devices: int) -> MeshShape:
    """The mesh on these devices, checked against the model and the batch sizes."""
    shape = self.mesh.shape(num_devices, self.model.towers, self.model.parallelism)
    self.check_batches(shape)
    return shape

  def check_batches(self, shape: MeshShape) -> None:
    """Every data shard gets the same number of examples (the only place this is checked)."""
    for flag, value in (('batch_size', self.train.batch_size),
                        ('eval_batch_size', self.train.eval_batch)):
      if value % shape.data:
        raise UserError(f'--{flag}={value} must be a positive multiple of the data axis '
                        f'({shape.data}) so every data shard gets the same batch.')


def _one_of(flag: str, value, choices) -> None:
  if value not in choices:
    raise UserError(f'--{flag} must be one of {", ".join(map(str, choices))}, got {value!r}.')
