"""The one entry point: python -m alexnet_jax.main --flagfile=experiments/NAME.flags.

Flags -> one Experiment (config.py), checked before anything is compiled or read ->
jax.distributed and the mesh -> the mode. Only this module reads the flags.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
import jax

from alexnet_jax import config
from alexnet_jax import distributed
from alexnet_jax import flags as flag_definitions
from alexnet_jax import parallel
from alexnet_jax import preflight
from alexnet_jax import predict
from alexnet_jax import workdir_lock
from alexnet_jax import writable

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


def _write_demo_data(manual_dir: str) -> None:
  from alexnet_jax.data import demo_data  # pylint: disable=import-outside-toplevel
  if not all(os.path.exists(os.path.join(manual_dir, name))
             for name in (demo_data.TRAIN_TAR, demo_data.VAL_TAR)):
    logging.info('Writing the demo ImageNet tars into %s', manual_dir)
    demo_data.write_demo_imagenet(manual_dir)


def _class_names(data_config: config.DataConfig) -> list[str]:
  from alexnet_jax.data import demo_data, input_pipeline  # pylint: disable=import-outside-toplevel
  labels = input_pipeline.dataset_info(data_config)[3]
  demo = {c.synset: c.shape for c in demo_data.CLASSES} if data_config.demo_data else {}
  return predict.readable(labels, demo)


def _preflight(experiment: config.Experiment, mesh, images: int) -> None:
  """DoesNotFitError, before any compile, for a configuration the devices cannot hold."""
  mode, train_config = experiment.run.mode, experiment.train
  check = lambda batch, **kwargs: preflight.check(experiment.model, experiment.optimizer, mesh,
                                                  batch, **kwargs)
  if mode in ('train', 'benchmark'):
    check(train_config.batch_size, training=True)
  elif mode in ('eval', 'visualize'):
    check(train_config.eval_batch, training=False,
          crops=experiment.data.eval_crops if mode == 'eval' else 1)
  elif mode == 'predict':
    data = mesh.shape[parallel.DATA]
    check(-(-images // data) * data, training=False, crops=experiment.data.eval_crops)


def run(experiment: config.Experiment, mesh) -> None:
  """Does what --mode says, on the mesh."""
  mode, workdir = experiment.run.mode, experiment.run.workdir
  model_config, data_config = experiment.model, experiment.data
  images = predict.image_paths(experiment.run.image) if mode == 'predict' else []
  logging.info('mode=%s mesh=%s devices=%d x %s', mode, config.MeshShape(**mesh.shape),
               jax.device_count(), jax.devices()[0].device_kind)
  _preflight(experiment, mesh, len(images))
  if mode == 'summary':
    from alexnet_jax import train  # pylint: disable=import-outside-toplevel
    from alexnet_jax.tools import summary  # pylint: disable=import-outside-toplevel
    text = summary.run(model_config, mesh, experiment.train.batch_size, train.lower_train_step)
    if jax.process_index() == 0:
      print(text)
    return
  if mode == 'benchmark':
    if workdir:
      writable.check_writable(workdir)
    from alexnet_jax.tools import benchmark  # pylint: disable=import-outside-toplevel
    benchmark.run(model_config, experiment.optimizer, experiment.train, mesh, workdir,
                  experiment.benchmark, squares=experiment.data.store != 'none')
    return
  if mode == 'visualize' and experiment.visualize.results:
    from alexnet_jax.tools import visualize  # pylint: disable=import-outside-toplevel
    visualize.write_results(experiment.visualize)
    return
  from alexnet_jax import evaluate, train  # pylint: disable=import-outside-toplevel
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  if data_config.demo_data:
    distributed.in_turn('demo_data', lambda: _write_demo_data(data_config.manual_dir))
  if mode == 'train':
    writable.check_writable(workdir)
    with workdir_lock.held_by_process_0(workdir):
      # Every process checks for the tars first, so a missing one stops all of them at once.
      input_pipeline.check_sources(data_config)
      distributed.in_turn('prepare', lambda: input_pipeline.prepare(data_config))
      train.train_and_evaluate(model_config, data_config, experiment.optimizer,
                               experiment.train, mesh, workdir)
    if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
      from alexnet_jax.tools import figures  # pylint: disable=import-outside-toplevel
      figures.learning_curves([workdir], os.path.join(workdir, 'learning_curves.png'))
      logging.info('Checkpoints, metrics.jsonl, eval results, TensorBoard events and '
                   'learning_curves.png are in %s.', workdir)
    return
  if mode in ('eval', 'visualize') or (mode == 'predict' and data_config.mean == 'pixel'):
    input_pipeline.check_store(data_config)  # one clear line, before anything compiles
  if mode == 'visualize':
    from alexnet_jax.tools import visualize  # pylint: disable=import-outside-toplevel
    figures_dir = experiment.visualize.figures_dir
    writable.check_writable(figures_dir or os.path.join(workdir, 'figures'),
                            '--figures_dir' if figures_dir else '--workdir')
    visualize.run_from_experiment(experiment, mesh)
    return
  if mode == 'predict':  # a file that is not an image fails here, before any compile
    crops = input_pipeline.load_images_for_predict(images, data_config)
  step, params = train.restore_params(model_config, mesh, workdir, experiment.run.checkpoint_step)
  normalizer = input_pipeline.normalizer_for(data_config, workdir)
  if mode == 'eval':
    eval_step = evaluate.make_eval_step(model_config, mesh, normalizer)
    result = evaluate.evaluate_split(eval_step, params, data_config, experiment.train.eval_batch,
                                     mesh)
    if jax.process_index() == 0:
      print(f'{data_config.eval_split} at step {step}: {evaluate.result_summary(result)}')
      try:
        print(f'Wrote {evaluate.write_result(workdir, data_config.eval_split, step, result)}')
      except OSError as error:  # a read-only workdir: the result above is all there is
        print(f'alexnet_jax: the result was not written into {workdir}/eval: '
              f'{error.strerror}.', file=sys.stderr)
  elif mode == 'predict':
    probs, classes = predict.top5(model_config, mesh, params, crops, normalizer)
    if jax.process_index() == 0:
      print(f'Checkpoint step {step}, {data_config.eval_crops} crop(s):')
      print(predict.format_predictions(images, probs, classes, _class_names(data_config)))


def _fail(message) -> None:
  print(f'alexnet_jax: error: {message}', file=sys.stderr)
  sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag reported as one line."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    _fail(f'{error} (--helpfull lists every flag)')


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
      shape = experiment.mesh_shape(jax.device_count())
      run(experiment, parallel.make_mesh(shape))
  except config.UserError as error:
    logging.debug('Traceback of the error below:', exc_info=True)  # --verbosity=1 shows it
    _fail(error)
  except KeyboardInterrupt:  # outside the training loop, where Ctrl-C saves (interrupts.py)
    print('alexnet_jax: stopped by Ctrl-C.', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
