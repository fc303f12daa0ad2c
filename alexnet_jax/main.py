"""The one entry point: python -m alexnet_jax.main --flagfile=experiments/NAME.flags.

Flags -> one Experiment (config.py), checked before anything is compiled or read ->
jax.distributed and the mesh -> the mode's handler (MODES). Only this module reads the
flags. The handlers of the modes that read data import alexnet_jax.data when they run:
TensorFlow takes seconds to load, which --help, a bad flag, summary and the step
benchmark do not wait for (and the GPU machines' synthetic runs do not need).
"""

from __future__ import annotations

# Ctrl-C from here on: one line and exit 130, whatever runs (the imports below take
# seconds); a training takes it over to save a checkpoint first (interrupts.CtrlC).
from alexnet_jax import interrupts  # pylint: disable=g-bad-import-order
interrupts.stop_at_once_on_ctrl_c()

import dataclasses  # pylint: disable=g-import-not-at-top,wrong-import-position
import logging as std_logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
import jax

from alexnet_jax import checkpoints
from alexnet_jax import config
from alexnet_jax import distributed
from alexnet_jax import evaluate
from alexnet_jax import flags as flag_definitions
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import preflight
from alexnet_jax import predict
from alexnet_jax import train
from alexnet_jax import workdir_lock
from alexnet_jax import writable
from alexnet_jax.tools import benchmark
from alexnet_jax.tools import figures
from alexnet_jax.tools import results
from alexnet_jax.tools import summary

# Warnings every read-only checkpoint open (eval, predict) and every imagenet2012
# preparation (there is no test tar) would print.
_EXPECTED_WARNINGS = ('Given directory is read only',
                      'ImageNet 2012 Challenge %s split not found')

FLAGS = flag_definitions.define()


def experiment_from_flags(flag_values: flags.FlagValues = FLAGS) -> config.Experiment:
  build = lambda config_class: flag_definitions.config_from(flag_values, config_class)
  return config.Experiment.from_parts(
      model=build(config.ModelConfig), data=build(config.DataConfig),
      optimizer=build(config.OptimizerConfig), train=build(config.TrainConfig),
      mesh=build(config.MeshConfig), processes=build(config.ProcessConfig),
      run=build(config.RunConfig), benchmark=build(config.BenchmarkConfig),
      visualize=build(config.VisualizeConfig))


def _quiet_libraries() -> None:
  """Keeps INFO lines to this package's own: orbax and TFDS log every file they touch.

  A failed background save makes orbax log its traceback twice: train reports it as one
  line (the tracebacks stay visible with --verbosity=1).
  """
  noisy = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/', '/etils/', '/matplotlib/')

  def keep(record) -> bool:
    if not any(part in record.pathname for part in noisy):
      return True
    if record.levelno < std_logging.WARNING or str(record.msg).startswith(_EXPECTED_WARNINGS):
      return False
    return not (record.exc_info and '/orbax/' in record.pathname and not logging.level_debug())

  logging.get_absl_handler().addFilter(keep)
  sys.unraisablehook = _without_abandoned_reads(sys.unraisablehook)


def _without_abandoned_reads(hook):
  """sys.unraisablehook, less what orbax's abandoned reads print after a restore failed.

  When one array of a checkpoint cannot be read, orbax gives up on the others: their
  coroutines, and TensorStore's callbacks into the closed event loop, each print a page
  of traceback, later and from other threads, after the one warning that reports the
  unreadable checkpoint. Anything else still reaches `hook`.
  """
  def filtered(unraisable):
    frames = traceback.extract_tb(unraisable.exc_traceback)
    abandoned = ('/orbax/' in repr(unraisable.object) or any(
        '/orbax/' in frame.filename for frame in frames) or (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'))
    if not abandoned:
      hook(unraisable)
  return filtered


# ----------------------------------------------------------------------------------
# The modes.


def _begin(experiment: config.Experiment, mesh, batch: int, training: bool,
           crops: int = 1) -> None:
  """Logs what runs where; DoesNotFitError, before any compile, if the devices cannot hold
  `batch` images (x crops) of a training step or an evaluation."""
  logging.info('mode=%s mesh=%s devices=%d x %s', experiment.run.mode,
               config.MeshShape(**mesh.shape), jax.device_count(), jax.devices()[0].device_kind)
  preflight.check(experiment.model, experiment.optimizer, mesh, batch, training=training,
                  crops=crops)


def _demo_tars(data_config: config.DataConfig) -> None:
  """With --demo_data: the demo ImageNet tars in --manual_dir, written if missing."""
  from alexnet_jax.data import demo_data  # pylint: disable=import-outside-toplevel

  def write():
    if not all(os.path.exists(os.path.join(data_config.manual_dir, name))
               for name in (demo_data.TRAIN_TAR, demo_data.VAL_TAR)):
      logging.info('Writing the demo ImageNet tars into %s', data_config.manual_dir)
      demo_data.write_demo_imagenet(data_config.manual_dir)

  if data_config.demo_data:
    distributed.in_turn('demo_data', write)


def _prepared(data_config: config.DataConfig, repair: bool = False) -> None:
  """The source dataset and the store, prepared if missing (every process checks the tars
  first, so a missing one stops all of them at once); with `repair`, a damaged store is
  prepared again."""
  from alexnet_jax.data import dataset  # pylint: disable=import-outside-toplevel
  _demo_tars(data_config)
  dataset.check_sources(data_config)
  distributed.in_turn('prepare', lambda: dataset.prepare(data_config, repair))


def _prepare(experiment: config.Experiment, mesh) -> None:
  del mesh  # preparing reads and writes files only
  from alexnet_jax.data import square_store, tfds_data  # pylint: disable=import-outside-toplevel
  data_config = experiment.data
  facts = os.path.join(square_store.store_dir(data_config), square_store.FACTS)
  before = os.path.getmtime(facts) if os.path.exists(facts) else None
  _prepared(data_config, repair=True)
  if jax.process_index() == 0 and data_config.store == 'none':
    print(f'Prepared {tfds_data.tfds_builder(data_config).data_dir}.')
  elif jax.process_index() == 0:
    print(f'{"Already prepared:" if os.path.getmtime(facts) == before else "Prepared"} '
          f'{square_store.store_dir(data_config)}: '
          f'{square_store.summary(square_store.read_facts(data_config))}.')


def _train(experiment: config.Experiment, mesh) -> None:
  from alexnet_jax.data import dataset, input_pipeline  # pylint: disable=import-outside-toplevel
  workdir, data_config = experiment.run.workdir, experiment.data
  writable.check_writable(workdir)
  _begin(experiment, mesh, experiment.train.batch_size, training=True)
  with workdir_lock.held_by_process_0(workdir):
    _prepared(data_config)
    num_classes = dataset.facts(data_config).num_classes
    if num_classes != experiment.model.num_classes:
      raise config.UserError(f'{data_config.dataset} has {num_classes} classes but the model '
                             f'has {experiment.model.num_classes}: set --num_classes='
                             f'{num_classes}.')
    data = input_pipeline.training_input(data_config, experiment.train.batch_size,
                                         experiment.train.eval_batch, mesh, workdir)
    train.train_and_evaluate(experiment.model, experiment.optimizer, experiment.train, mesh,
                             workdir, data)
  if data.damaged_records:
    logging.warning('Skipped %d damaged record(s) of the store (--skip_damaged_records); to '
                    'train on them, prepare it again: %s', data.damaged_records,
                    data.damaged.repair)
  if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    figures.learning_curves([workdir], os.path.join(workdir, 'learning_curves.png'))
    logging.info('Checkpoints, metrics.jsonl, eval results, TensorBoard events and '
                 'learning_curves.png are in %s.', workdir)


def _restored(experiment: config.Experiment, mesh):
  """(step, parameters) of --workdir's newest checkpoint (or --checkpoint_step's)."""
  return train.restore_params(experiment.model, mesh, experiment.run.workdir,
                              experiment.run.checkpoint_step)


def _eval(experiment: config.Experiment, mesh) -> None:
  # pylint: disable-next=import-outside-toplevel
  from alexnet_jax.data import dataset, input_pipeline, mean_image
  workdir, data_config = experiment.run.workdir, experiment.data
  _begin(experiment, mesh, experiment.train.eval_batch, training=False,
         crops=data_config.eval_crops)
  _demo_tars(data_config)
  dataset.check_store(data_config)  # one clear line, before anything compiles
  step, params = _restored(experiment, mesh)
  normalizer = mean_image.normalizer_for(data_config, workdir)
  eval_step = evaluate.make_eval_step(experiment.model, mesh, normalizer)
  batches = input_pipeline.eval_batches(data_config, experiment.train.eval_batch, mesh)
  with jax.set_mesh(mesh):
    result = dict(evaluate.evaluate(eval_step, params, batches), crops=data_config.eval_crops)
  if jax.process_index() == 0:
    print(f'{data_config.eval_split} at step {step}: {evaluate.result_summary(result)}')
    try:
      print(f'Wrote {evaluate.write_result(workdir, data_config.eval_split, step, result)}')
    except OSError as error:  # a read-only workdir: the result above is all there is
      print(f'alexnet_jax: the result was not written into {workdir}/eval: '
            f'{error.strerror}.', file=sys.stderr)


def _predict(experiment: config.Experiment, mesh) -> None:
  # pylint: disable-next=import-outside-toplevel
  from alexnet_jax.data import dataset, demo_data, input_pipeline, mean_image, tfds_data
  images = predict.image_paths(experiment.run.image)  # an unreadable file: one line, first
  data_config, data = experiment.data, mesh.shape[parallel.DATA]
  _begin(experiment, mesh, -(-len(images) // data) * data, training=False,
         crops=data_config.eval_crops)
  _demo_tars(data_config)
  if data_config.mean == 'pixel':
    dataset.check_store(data_config)
  crops = input_pipeline.load_images_for_predict(images, data_config)
  step, params = _restored(experiment, mesh)
  normalizer = mean_image.normalizer_for(data_config, experiment.run.workdir)
  probs, classes = predict.top5(experiment.model, mesh, params, crops, normalizer)
  if jax.process_index() == 0:
    demo = {c.synset: c.shape for c in demo_data.CLASSES} if data_config.demo_data else {}
    try:
      labels = dataset.facts(data_config).class_names
    except config.UserError:  # not prepared here: ImageNet's classes are known without it
      if data_config.dataset != tfds_data.IMAGENET:
        raise
      labels = list(predict.imagenet_names())  # in TFDS's label order
    names = predict.readable(labels, demo)
    print(f'Checkpoint step {step}, {data_config.eval_crops} crop(s):')
    print(predict.format_predictions(images, probs, classes, names))


def _visualize(experiment: config.Experiment, mesh) -> None:
  if experiment.visualize.results:
    results.write_results(experiment.visualize)
    return
  from alexnet_jax.data import dataset  # pylint: disable=import-outside-toplevel
  from alexnet_jax.tools import visualize  # pylint: disable=import-outside-toplevel
  _begin(experiment, mesh, experiment.train.eval_batch, training=False)
  _demo_tars(experiment.data)
  dataset.check_store(experiment.data)  # one clear line, before anything compiles
  figures_dir = experiment.visualize.figures_dir
  writable.check_writable(figures_dir or os.path.join(experiment.run.workdir, 'figures'),
                          '--figures_dir' if figures_dir else '--workdir')
  visualize.run_from_experiment(experiment, mesh)


def _summary(experiment: config.Experiment, mesh) -> None:
  text = summary.run(experiment.model, mesh, experiment.train.batch_size,
                     train.lower_train_step)
  if jax.process_index() == 0:
    print(text)


def _benchmark(experiment: config.Experiment, mesh) -> None:
  workdir, batch = experiment.run.workdir, experiment.train.batch_size
  if experiment.benchmark.benchmark == 'input':
    from alexnet_jax.tools import input_benchmark  # pylint: disable=import-outside-toplevel
    text = input_benchmark.run(experiment.data, experiment.benchmark, batch, mesh)
    if jax.process_index() == 0:
      print(text)
    return
  if workdir:
    writable.check_writable(workdir)
  _begin(experiment, mesh, batch, training=True)
  benchmark.run(experiment.model, experiment.optimizer, experiment.train, mesh, workdir,
                experiment.benchmark, squares=experiment.data.store != 'none')


def _import(experiment: config.Experiment, mesh) -> None:
  from alexnet_jax import onnx_import  # pylint: disable=import-outside-toplevel
  workdir = experiment.run.workdir
  if (os.path.isdir(os.path.join(workdir, 'checkpoints'))
      and os.listdir(os.path.join(workdir, 'checkpoints'))):
    raise config.UserError(f'--workdir={workdir} already holds a run (checkpoints/): import '
                           'into a new --workdir.')
  writable.check_writable(workdir)
  net, params = onnx_import.read(experiment.run.onnx)  # a bad file: one line, nothing written
  with workdir_lock.held_by_process_0(workdir):
    store = checkpoints.Checkpoints(workdir, dataclasses.asdict(net))
    store.save(0, train.state_from_params(net, experiment.optimizer, mesh, params),
               progress={'examples_seen': 0})
    store.close()
  if jax.process_index() == 0:
    print(f'Imported {experiment.run.onnx} into {workdir}: {net.towers} towers, '
          f'{net.num_classes} classes, {net.image_size}x{net.image_size} input, '
          f'{net.lrn_variant} LRN, {net.input_convention} input convention; '
          f'{model_lib.count_params(params):,} parameters. Evaluate it with: '
          f'python -m alexnet_jax.main --mode=eval --workdir={workdir} --data_dir=TFDS_DIR')


MODES = {'train': _train, 'eval': _eval, 'predict': _predict, 'visualize': _visualize,
         'summary': _summary, 'benchmark': _benchmark, 'prepare': _prepare, 'import': _import}


def run(experiment: config.Experiment, mesh) -> None:
  """Does what --mode says, on the mesh."""
  MODES[experiment.run.mode](experiment, mesh)


def _fail(message) -> None:
  print(f'alexnet_jax: error: {message}', file=sys.stderr)
  sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag reported as one line."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    _fail(f'{error} (--helpfull lists every flag)')


def with_net_of_checkpoint(experiment: config.Experiment,
                           flag_values: flags.FlagValues = FLAGS) -> config.Experiment:
  """The experiment on the net its workdir's checkpoint holds (or, for a training that has
  none yet, --init_from's): the net's settings come from there; a flag set to another value
  is one line."""
  run, mode = experiment.run, experiment.run.mode
  if mode not in ('train', 'eval', 'predict', 'visualize', 'summary') or not run.workdir:
    return experiment
  source, net = run.workdir, checkpoints.net_of(run.workdir)
  if net is None and mode == 'train' and experiment.train.init_from:
    source, net = experiment.train.init_from, checkpoints.net_of(experiment.train.init_from)
    if net is None:
      raise config.UserError(f'--init_from={source} holds no checkpoint: point it at a '
                             'training or --mode=import run.')
  if net is None:
    return experiment
  contradicting = [name for name, value in net.items() if flag_values[name].present
                   and value != getattr(experiment.model, name)]
  if contradicting:
    given = ', '.join(f'--{name}={flag_values[name].serialize().split("=", 1)[-1]}'
                      for name in contradicting)
    held = ', '.join(f'{name}={net[name]}' for name in contradicting)
    raise config.UserError(f'{given}: the checkpoint in {source} holds a net with {held}. '
                           'Drop the flag (a run on a workdir takes its net from its '
                           'checkpoint), or use another --workdir.')
  parts = {field.name: getattr(experiment, field.name)
           for field in dataclasses.fields(experiment)}
  return config.Experiment.from_parts(**{**parts,
                                         'model': dataclasses.replace(experiment.model, **net)})


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}: every setting is a --flag.')
  _quiet_libraries()
  try:
    experiment = experiment_from_flags()
    experiment.validate()
    if experiment.mesh.cpu_devices:
      jax.config.update('jax_num_cpu_devices', experiment.mesh.cpu_devices)
    distributed.initialize(experiment.processes)  # before anything touches a device
    with distributed.lost_processes_reported():
      experiment = with_net_of_checkpoint(experiment)
      experiment.validate()
      shape = experiment.mesh_shape(jax.device_count())
      run(experiment, parallel.make_mesh(shape))
  except config.UserError as error:
    logging.debug('Traceback of the error below:', exc_info=True)  # --verbosity=1 shows it
    _fail(error)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
