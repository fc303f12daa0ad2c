"""The command-line flags: the public interface, with the configs' own defaults.

Each flag fills the config field of the same name (`config.py`); `main.py` reads them and
builds the Experiment, nothing else does. `define` also serves to read an experiment's
flagfile into a FlagValues of its own (the results table needs each run's flags).
"""

from __future__ import annotations

import contextlib
import os

from absl import flags

from alexnet_jax import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Which config each flag fills: {config class: flag names}, in the order of --help.
CONFIGS = {
    config.RunConfig: ('mode', 'workdir', 'checkpoint_step', 'image', 'onnx'),
    config.ModelConfig: ('towers', 'num_classes', 'image_size', 'width', 'lrn',
                         'overlapping_pool', 'dropout_rate', 'dtype', 'init', 'crossings',
                         'lrn_variant', 'conv1_padding', 'pool_rounding', 'input_convention',
                         'parallelism'),
    config.MeshConfig: ('mesh', 'cpu_devices'),
    config.ProcessConfig: ('distributed', 'coordinator_address', 'num_processes', 'process_id',
                           'heartbeat_timeout', 'initialization_timeout',
                           'coordination_service'),
    config.DataConfig: ('dataset', 'data_dir', 'manual_dir', 'demo_data', 'train_split',
                        'eval_split', 'augment', 'eval_crops', 'mean', 'pca_std',
                        'standardize', 'shuffle_buffer', 'store', 'store_quality',
                        'skip_damaged_records'),
    config.OptimizerConfig: ('learning_rate', 'momentum', 'weight_decay', 'decay_biases',
                             'schedule', 'linear_scaling', 'warmup_steps', 'lr_step_every',
                             'plateau_patience', 'max_drops'),
    config.TrainConfig: ('batch_size', 'num_epochs', 'num_train_steps', 'eval_every_steps',
                         'checkpoint_every_steps', 'log_every_steps', 'keep_checkpoints',
                         'eval_batch_size', 'profile_steps', 'seed', 'allow_batch_change',
                         'init_from'),
    config.BenchmarkConfig: ('benchmark', 'benchmark_steps', 'benchmark_repeats', 'peak_tflops',
                             'benchmark_stores', 'benchmark_seconds', 'benchmark_quiet',
                             'benchmark_photos'),
    config.VisualizeConfig: ('queries', 'neighbours', 'max_train_images', 'figures_dir',
                             'results', 'runs', 'results_path', 'curves_path',
                             'results_note'),
}

HELP = {
    'mode': 'What to do (prepare: write the demo tars with --demo_data, prepare the TFDS '
            'dataset and the store of squares, then stop).',
    'workdir': 'Directory for everything a run writes.',
    'checkpoint_step': 'eval/predict/visualize: this step (default: the newest).',
    'image': 'predict: image files.',
    'onnx': "import: Caffe's bvlc_alexnet as an ONNX file (the ONNX Model Zoo's).",
    'towers': "2: the paper's net; 1: its one-GPU ablation.",
    'num_classes': 'Output classes.',
    'image_size': 'Input side; 224 is padded (0, 3) like cuda-convnet.',
    'width': 'Multiplies every layer width (small variants).',
    'lrn': 'Local response normalization after conv1, conv2.',
    'overlapping_pool': 'Max-pool 3x3 stride 2 (paper) or 2x2 stride 2.',
    'dropout_rate': 'Dropout after fc6 and fc7.',
    'dtype': 'Compute dtype; parameters stay float32.',
    'init': "paper: N(0,0.01), biases 1; caffe: bvlc_alexnet's; he: He-normal.",
    'crossings': 'Layers that read every tower (the paper: conv3,fc6,fc7,fc8).',
    'lrn_variant': "paper: k=2, alpha, within each tower; caffe: k=1, alpha/n, across both "
                   "towers (Caffe's bvlc_alexnet; set by --mode=import).",
    'conv1_padding': "cuda-convnet: zeros to the bottom/right for 55 outputs; valid: Caffe's.",
    'pool_rounding': "floor: every pooling window inside the map; ceil: Caffe's.",
    'input_convention': "paper: RGB minus the run's mean; caffe: BGR minus Caffe's mean pixel "
                        "(what imported weights expect).",
    'parallelism': "How the net is laid over the devices: towers (the paper's 2012 split, "
                   'explicit collectives at its crossings), hybrid (2014: convolutions '
                   'data-parallel, fc6..fc8 split by units), data (every device holds all '
                   'parameters), fsdp (parameters and momentum split over the devices). See '
                   'docs/PARALLELISM.md.',
    'mesh': 'data:D,tower:T. Default: every device, tower=2 when the model has two towers, '
            'the device count is even and --parallelism=towers.',
    'cpu_devices': 'Split the CPU into this many JAX devices (try meshes on a laptop). Only '
                   'when running on the CPU.',
    'distributed': 'Start jax.distributed? auto: when --num_processes is set or in a SLURM '
                   'job step of several tasks; on: always (TPU VM pods); off: never.',
    'coordinator_address': 'host:port of process 0 (with --num_processes).',
    'num_processes': 'Processes in the run.',
    'process_id': 'This process: 0..num_processes-1.',
    'heartbeat_timeout': 'Seconds without a heartbeat after which a process counts as dead '
                         'and the others stop with an error.',
    'initialization_timeout': 'Seconds to wait for every process to join.',
    'coordination_service': "Where JAX's coordination service runs: process0 (JAX's way; "
                            'losing process 0 ends the others at once) or separate (a process '
                            'of its own, started by launch.sh local).',
    'dataset': 'Any TFDS image-classification dataset.',
    'data_dir': "TFDS data dir (default: TFDS's own).",
    'manual_dir': 'Where ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar lie.',
    'demo_data': 'Write the built-in demo ImageNet tars into --manual_dir first (if they are '
                 'not there yet).',
    'train_split': 'TFDS split string, e.g. train[:90%].',
    'eval_split': 'TFDS split string.',
    'augment': 'paper: 256 square, random crop, flip, PCA noise.',
    'eval_crops': "1 (centre) or 10 (the paper's).",
    'mean': 'Subtract the per-channel mean or the per-pixel mean image.',
    'pca_std': 'Std of the PCA colour noise; 0 turns it off.',
    'standardize': 'Also divide the input by the per-channel std (the paper does not; He '
                   'init needs it).',
    'shuffle_buffer': 'Examples in the shuffle buffer.',
    'store': 'jpeg or raw: the store of the central R x R squares (R: 256 for --image_size '
             '224..256), prepared once from the dataset; the crops, flips, PCA noise and mean '
             'happen on the device. none: the full-size images, decoded and cropped on the '
             'host (needed by --augment=inception).',
    'store_quality': 'JPEG quality of --store=jpeg.',
    'skip_damaged_records': 'Train past records of the store whose checksum fails (each takes '
                            'a copy of another square of its batch), counted in metrics.jsonl '
                            'and reported at the end, instead of stopping.',
    'learning_rate': 'Base learning rate (paper: 0.01).',
    'momentum': 'Momentum (paper: 0.9).',
    'weight_decay': 'Weight decay (paper: 0.0005).',
    'decay_biases': 'Also decay biases.',
    'schedule': 'plateau: /10 when eval error stops improving (paper).',
    'linear_scaling': 'Learning rate x batch / 128.',
    'warmup_steps': 'cosine: linear warm-up steps.',
    'lr_step_every': 'step: divide by 10 every N steps.',
    'plateau_patience': 'plateau: evaluations without improvement before a drop.',
    'max_drops': 'plateau: at most this many drops.',
    'batch_size': 'Global batch size.',
    'num_epochs': 'Training epochs.',
    'num_train_steps': 'Wins over --num_epochs when > 0.',
    'eval_every_steps': '0: every epoch.',
    'checkpoint_every_steps': 'Save every N steps.',
    'log_every_steps': 'Progress line every N steps.',
    'keep_checkpoints': 'Newest checkpoints kept (the best is kept too).',
    'eval_batch_size': '0: --batch_size.',
    'profile_steps': 'Write a profiler trace of N steps.',
    'seed': 'Seed of parameters, dropout and data order.',
    'init_from': 'A workdir (e.g. an imported net) whose newest checkpoint\'s parameters '
                 'start this training, at step 0, when --workdir has no checkpoint yet.',
    'allow_batch_change': 'Resume a checkpoint trained with another --batch_size: the input '
                          'continues after the examples it has seen (without this flag such '
                          'a resume is refused, since counting steps would replay or skip '
                          'data).',
    'benchmark': '--mode=benchmark: step (the training step on synthetic batches) or input '
                 '(the input pipeline, images per CPU-second).',
    'benchmark_steps': 'Steps per timed window.',
    'benchmark_repeats': 'Timed windows (median taken).',
    'peak_tflops': 'Device peak for MFU (default: a table of known chips).',
    'benchmark_stores': '--benchmark=input: the inputs compared side by side (none, jpeg, raw).',
    'benchmark_seconds': '--benchmark=input: seconds per timed window.',
    'benchmark_quiet': '--benchmark=input: before each window, wait (up to 2 min) until the '
                       'CPUs are less busy than this fraction (0.1: idle); 0: never.',
    'benchmark_photos': '--benchmark=input without --data_dir: photo-like JPEGs per class '
                        '(8 classes, 500x375) written to a temporary folder and read.',
    'queries': 'Figure 4: query images, the first of --eval_split.',
    'neighbours': 'Figure 4: training images per query (paper: 6).',
    'max_train_images': 'Figure 4: search the first N images of --train_split (time; memory '
                        'does not grow with N).',
    'figures_dir': 'Where figures go (default WORKDIR/figures).',
    'results': '--mode=visualize: write the results table of --runs instead of figures.',
    'runs': '--results: [EXPERIMENT=]WORKDIR of each run (the experiment defaults to the '
            'flagfile whose --workdir it is).',
    'results_path': '--results: the Markdown file written (default docs/RESULTS.md).',
    'curves_path': '--results: also plot the learning curves of --runs here.',
    'results_note': '--results: a paragraph under the table, e.g. how the runs were made.',
}

# Flags whose values are a fixed set (the rest take their type from the default).
ENUMS = {'mode': config.MODES, 'dtype': config.DTYPES, 'init': config.INIT_SCHEMES,
         'lrn_variant': config.LRN_VARIANTS, 'conv1_padding': config.CONV1_PADDINGS,
         'pool_rounding': config.POOL_ROUNDINGS, 'input_convention': config.INPUT_CONVENTIONS,
         'parallelism': config.PARALLELISMS, 'distributed': config.DISTRIBUTED_MODES,
         'coordination_service': config.COORDINATION_SERVICES, 'augment': config.AUGMENTS,
         'mean': config.MEANS, 'store': config.STORES, 'schedule': config.SCHEDULES,
         'benchmark': config.BENCHMARKS}
# Flags with no default of their own type (None) and the type they take.
TYPES = {'workdir': str, 'checkpoint_step': int, 'mesh': str, 'cpu_devices': int,
         'onnx': str, 'init_from': str,
         'coordinator_address': str, 'num_processes': int, 'process_id': int,
         'data_dir': str, 'manual_dir': str, 'peak_tflops': float, 'figures_dir': str,
         'results_path': str, 'curves_path': str}
# Computed defaults, not the config's.
DEFAULTS = {'results_path': os.path.join(ROOT, 'docs', 'RESULTS.md')}


def _define(name: str, default, flag_values: flags.FlagValues) -> None:
  help_text = HELP[name]
  define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
            str: flags.DEFINE_string}
  if name in ENUMS:
    flags.DEFINE_enum(name, default, ENUMS[name], help_text, flag_values=flag_values)
  elif isinstance(default, tuple):
    flags.DEFINE_list(name, list(default), help_text, flag_values=flag_values)
  else:
    kind = TYPES.get(name, type(default))
    define[kind](name, default, help_text, flag_values=flag_values)


def define(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """Defines every flag in flag_values, each with its config field's default."""
  for config_class, names in CONFIGS.items():
    defaults = {field.name: field.default for field in config_class.__dataclass_fields__.values()}
    for name in names:
      _define(name, DEFAULTS.get(name, defaults[name]), flag_values)
  return flag_values


def read_flagfile(path: str) -> flags.FlagValues:
  """The flags of an experiment's flagfile, parsed by absl into fresh FlagValues."""
  values = define(flags.FlagValues())
  path = os.path.abspath(path)
  with contextlib.chdir(ROOT):  # nested --flagfile paths are relative to the repository
    values([__name__, f'--flagfile={path}'])
  return values


def config_from(flag_values: flags.FlagValues, config_class):
  """config_class built from the flags of its fields (lists become tuples)."""
  def value(name):
    raw = flag_values[name].value
    return tuple(raw) if isinstance(raw, list) else raw
  return config_class(**{name: value(name) for name in CONFIGS[config_class]})
