"""The one entry point: python -m alexnet_jax.main --flagfile=experiments/NAME.flags."""

from __future__ import annotations

import logging as std_logging
import os
import sys

# TensorFlow's C++ INFO lines (oneDNN, CPU features) are not news; its warnings stay.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax

from alexnet_jax import config as flags_lib
from alexnet_jax import distributed
from alexnet_jax import errors
from alexnet_jax import parallel
from alexnet_jax import preflight
from alexnet_jax import predict
from alexnet_jax import visualize  # defines its flags before parsing
from alexnet_jax import workdir_lock
from alexnet_jax import writable

# Errors that mean "the input is wrong", reported as one clear line, not a traceback.
USER_ERRORS = (errors.UserError, ValueError, FileNotFoundError, FloatingPointError)
# Warnings every read-only checkpoint open (eval, predict) and every imagenet2012
# preparation (there is no test tar) would print.
_EXPECTED_WARNINGS = ('Given directory is read only',
                      'ImageNet 2012 Challenge %s split not found')


def _quiet_libraries() -> None:
  """Keeps INFO lines to this package's own: orbax and TFDS log every file they touch.

  A failed background save makes orbax log its traceback twice: train reports it as one
  line (the tracebacks stay visible with --verbosity=1).
  """
  noisy = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/', '/etils/')

  def keep(record) -> bool:
    if not any(part in record.pathname for part in noisy):
      return True
    if record.levelno < std_logging.WARNING or str(record.msg).startswith(_EXPECTED_WARNINGS):
      return False
    return not (record.exc_info and '/orbax/' in record.pathname and not logging.level_debug())

  logging.get_absl_handler().addFilter(keep)


def _validated():
  """Every config the mode needs, checked before anything is compiled or read."""
  flags_lib.check_flag_values()
  mode = flags_lib.mode()
  model_config = flags_lib.model_config()
  needs_data = mode in ('train', 'eval', 'predict', 'visualize')
  data_config = flags_lib.data_config() if needs_data else None
  opt_config = flags_lib.optimizer_config()
  train_config = flags_lib.train_config()
  if needs_data and not flags_lib.WORKDIR.value:
    raise ValueError(f'--mode={mode} needs --workdir (where checkpoints and metrics live).')
  if mode == 'predict' and not flags_lib.IMAGE.value:
    raise ValueError('--mode=predict needs --image=FILE[,FILE...].')
  if flags_lib.DEMO_DATA.value and not flags_lib.MANUAL_DIR.value:
    raise ValueError('--demo_data writes the demo tars into --manual_dir: set --manual_dir.')
  if flags_lib.CPU_DEVICES.value:
    jax.config.update('jax_num_cpu_devices', flags_lib.CPU_DEVICES.value)
  distributed.initialize(flags_lib.process_config())  # before anything touches a device
  shape = flags_lib.mesh_shape(jax.device_count(), model_config.towers)
  return model_config, data_config, opt_config, train_config, shape


def _write_demo_data() -> None:
  from alexnet_jax import demo_data  # pylint: disable=import-outside-toplevel
  manual_dir = flags_lib.MANUAL_DIR.value
  if not all(os.path.exists(os.path.join(manual_dir, name))
             for name in (demo_data.TRAIN_TAR, demo_data.VAL_TAR)):
    logging.info('Writing the demo ImageNet tars into %s', manual_dir)
    demo_data.write_demo_imagenet(manual_dir)


def _class_names(data_config) -> list[str]:
  from alexnet_jax import demo_data, input_pipeline  # pylint: disable=import-outside-toplevel
  labels = input_pipeline.dataset_info(data_config)[3]
  demo = ({c.synset: c.shape for c in demo_data.CLASSES} if flags_lib.DEMO_DATA.value else {})
  return predict.readable(labels, demo)


def _preflight(mode, model_config, data_config, opt_config, train_config, mesh,
               images: int) -> None:
  """DoesNotFitError, before any compile, for a configuration the devices cannot hold."""
  if mode in ('train', 'benchmark'):
    preflight.check(model_config, opt_config, mesh, train_config.batch_size, training=True)
  elif mode in ('eval', 'visualize'):
    crops = data_config.eval_crops if mode == 'eval' else 1
    preflight.check(model_config, opt_config, mesh, train_config.eval_batch, training=False,
                    crops=crops)
  elif mode == 'predict':
    data = mesh.shape[parallel.DATA]
    preflight.check(model_config, opt_config, mesh, -(-images // data) * data, training=False,
                    crops=data_config.eval_crops)


def run(mode, model_config, data_config, opt_config, train_config, mesh) -> None:
  workdir = flags_lib.WORKDIR.value
  images = predict.image_paths(flags_lib.IMAGE.value) if mode == 'predict' else []
  _preflight(mode, model_config, data_config, opt_config, train_config, mesh, len(images))
  if mode == 'summary':
    from alexnet_jax import summary, train  # pylint: disable=import-outside-toplevel
    text = summary.run(model_config, mesh, train_config.batch_size, train.lower_train_step)
    if jax.process_index() == 0:
      print(text)
    return
  if mode == 'visualize':
    if visualize.FIGURES_DIR.value:
      writable.check_writable(visualize.FIGURES_DIR.value, '--figures_dir')
    else:
      writable.check_writable(os.path.join(workdir, 'figures'), '--workdir')
    visualize.run_from_flags(model_config, data_config, opt_config, train_config, mesh)
    return
  if mode == 'benchmark':
    if workdir:
      writable.check_writable(workdir)
    from alexnet_jax import benchmark  # pylint: disable=import-outside-toplevel
    benchmark.run(model_config, opt_config, train_config, mesh, workdir,
                  steps=flags_lib.BENCHMARK_STEPS.value, repeats=flags_lib.BENCHMARK_REPEATS.value,
                  peak_tflops=flags_lib.PEAK_TFLOPS.value)
    return
  from alexnet_jax import evaluate, input_pipeline, train  # pylint: disable=import-outside-toplevel
  if flags_lib.DEMO_DATA.value:
    distributed.in_turn('demo_data', _write_demo_data)
  if mode == 'train':
    writable.check_writable(workdir)
    with workdir_lock.held_by_process_0(workdir):
      # Every process checks for the tars first, so a missing one stops all of them at once.
      input_pipeline.check_sources(data_config)
      distributed.in_turn('prepare', lambda: input_pipeline.prepare(data_config))
      train.train_and_evaluate(model_config, data_config, opt_config, train_config, mesh,
                               workdir, allow_batch_change=flags_lib.ALLOW_BATCH_CHANGE.value)
    return
  if mode == 'predict':  # a file that is not an image fails here, before any compile
    crops = input_pipeline.load_images_for_predict(images, data_config)
  step, params = train.restore_params(model_config, opt_config, mesh, workdir,
                                      flags_lib.CHECKPOINT_STEP.value)
  normalizer = input_pipeline.normalizer_for(data_config, workdir)
  if mode == 'eval':
    eval_step = evaluate.make_eval_step(model_config, mesh, normalizer)
    result = evaluate.evaluate_split(eval_step, params, data_config, train_config.eval_batch,
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
    return flags.FLAGS(argv)
  except flags.Error as error:
    _fail(f'{error} (--helpfull lists every flag)')


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}: every setting is a --flag.')
  _quiet_libraries()
  try:
    model_config, data_config, opt_config, train_config, shape = _validated()
    mesh = parallel.make_mesh(shape)
    mode = flags_lib.mode()
    logging.info('mode=%s mesh=%s devices=%d x %s', mode, shape, jax.device_count(),
                 jax.devices()[0].device_kind)
    run(mode, model_config, data_config, opt_config, train_config, mesh)
  except USER_ERRORS as error:
    logging.debug('Traceback of the error below:', exc_info=True)  # --verbosity=1 shows it
    _fail(error)
  except KeyboardInterrupt:  # outside the training loop, where Ctrl-C saves (interrupts.py)
    print('alexnet_jax: stopped by Ctrl-C.', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
