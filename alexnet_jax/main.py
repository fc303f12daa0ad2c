"""The one entry point: python -m alexnet_jax.main --flagfile=experiments/NAME.flags.

Flags -> one Experiment (config.py), checked before anything is compiled or read ->
jax.distributed and the mesh -> the mode. Only this module reads the flags.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax

from alexnet_jax import config
from alexnet_jax import distributed
from alexnet_jax import flags as flag_definitions
from alexnet_jax import parallel

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
  """Keeps INFO lines to this package's own: orbax and TFDS log every file they touch."""
  noisy = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/', '/etils/')
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or not any(
          part in record.pathname for part in noisy))


def _write_demo_data(manual_dir: str) -> None:
  from alexnet_jax.data import demo_data  # pylint: disable=import-outside-toplevel
  if not all(os.path.exists(os.path.join(manual_dir, name))
             for name in (demo_data.TRAIN_TAR, demo_data.VAL_TAR)):
    logging.info('Writing the demo ImageNet tars into %s', manual_dir)
    demo_data.write_demo_imagenet(manual_dir)


def _class_names(data_config: config.DataConfig) -> list[str]:
  from alexnet_jax import predict  # pylint: disable=import-outside-toplevel
  from alexnet_jax.data import demo_data, input_pipeline  # pylint: disable=import-outside-toplevel
  labels = input_pipeline.dataset_info(data_config)[3]
  demo = {c.synset: c.shape for c in demo_data.CLASSES} if data_config.demo_data else {}
  return predict.readable(labels, demo)


def run(experiment: config.Experiment, mesh) -> None:
  """Does what --mode says, on the mesh."""
  mode, workdir = experiment.run.mode, experiment.run.workdir
  model_config, data_config = experiment.model, experiment.data
  if mode == 'summary':
    from alexnet_jax import train  # pylint: disable=import-outside-toplevel
    from alexnet_jax.tools import summary  # pylint: disable=import-outside-toplevel
    text = summary.run(model_config, mesh, experiment.train.batch_size, train.lower_train_step)
    if jax.process_index() == 0:
      print(text)
    return
  if mode == 'benchmark':
    from alexnet_jax.tools import benchmark  # pylint: disable=import-outside-toplevel
    benchmark.run(model_config, experiment.optimizer, experiment.train, mesh, workdir,
                  experiment.benchmark)
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
    # Every process checks for the tars first, so a missing one stops all of them at once.
    input_pipeline.check_sources(data_config)
    distributed.in_turn('prepare', lambda: input_pipeline.prepare(data_config))
    train.train_and_evaluate(model_config, data_config, experiment.optimizer, experiment.train,
                             mesh, workdir)
    return
  if mode == 'visualize':
    from alexnet_jax.tools import visualize  # pylint: disable=import-outside-toplevel
    visualize.run_from_experiment(experiment, mesh)
    return
  step, params = train.restore_params(model_config, mesh, workdir, experiment.run.checkpoint_step)
  normalizer = input_pipeline.normalizer_for(data_config, workdir)
  if mode == 'eval':
    eval_step = evaluate.make_eval_step(model_config, mesh, normalizer)
    result = evaluate.evaluate_split(eval_step, params, data_config, experiment.train.eval_batch,
                                     mesh)
    if jax.process_index() == 0:
      path = evaluate.write_result(workdir, data_config.eval_split, step, result)
      print(f'{data_config.eval_split} at step {step}: {evaluate.result_summary(result)}')
      print(f'Wrote {path}')
  elif mode == 'predict':
    from alexnet_jax import predict  # pylint: disable=import-outside-toplevel
    paths = experiment.run.image
    crops = input_pipeline.load_images_for_predict(paths, data_config)
    probs, classes = predict.top5(model_config, mesh, params, crops, normalizer)
    if jax.process_index() == 0:
      print(f'Checkpoint step {step}, {data_config.eval_crops} crop(s):')
      print(predict.format_predictions(paths, probs, classes, _class_names(data_config)))


def _fail(error: config.UserError) -> None:
  logging.debug('Traceback of the error below:', exc_info=True)  # --verbosity=1 shows it
  print(f'alexnet_jax: error: {error}', file=sys.stderr)
  sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  _quiet_libraries()
  try:
    experiment = experiment_from_flags()
    experiment.validate()
    if experiment.mesh.cpu_devices:
      jax.config.update('jax_num_cpu_devices', experiment.mesh.cpu_devices)
    distributed.initialize(experiment.processes)  # before anything touches a device
    shape = experiment.mesh_shape(jax.device_count())
  except config.UserError as error:
    raise app.UsageError(str(error)) from None
  mesh = parallel.make_mesh(shape)
  logging.info('mode=%s mesh=%s devices=%d x %s', experiment.run.mode, shape,
               jax.device_count(), jax.devices()[0].device_kind)
  try:
    run(experiment, mesh)
  except config.UserError as error:
    _fail(error)


if __name__ == '__main__':
  app.run(main)
