"""The one entry point: python -m alexnet_jax.main --flagfile=experiments/NAME.flags."""

from __future__ import annotations

from absl import app
from absl import logging
import jax

from alexnet_jax import config as flags_lib
from alexnet_jax import parallel


def _setup_devices() -> None:
  if flags_lib.CPU_DEVICES.value:
    jax.config.update('jax_num_cpu_devices', flags_lib.CPU_DEVICES.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    model_config = flags_lib.model_config()
    _setup_devices()
    shape = flags_lib.mesh_shape(jax.device_count(), model_config.towers)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  mesh = parallel.make_mesh(shape)
  mode = flags_lib.mode()
  logging.info('mode=%s mesh=%s devices=%s', mode, shape, jax.devices()[0].device_kind)
  if mode == 'summary':
    from alexnet_jax import summary, train
    print(summary.run(model_config, mesh, flags_lib.BATCH_SIZE.value, train.lower_train_step))
  else:
    raise app.UsageError(f'--mode={mode} is not built yet.')


if __name__ == '__main__':
  app.run(main)
