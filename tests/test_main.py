"""The entry point's handlers: every mode has one, and training takes the workdir first."""

import subprocess
import sys

from absl import flags
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import flags as flag_definitions
from alexnet_jax import main
from alexnet_jax import workdir_lock
from tests import meshes


def test_every_mode_has_a_handler():
  assert set(main.MODES) == set(config_lib.MODES)


def test_training_takes_the_workdir_lock_before_it_reads_any_data(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import fcntl, sys, time; f = open(sys.argv[1], "a"); '
       'fcntl.lockf(f, fcntl.LOCK_EX); print(flush=True); time.sleep(120)',
       str(tmp_path / workdir_lock.LOCK_FILE)], stdout=subprocess.PIPE, text=True)
  try:
    holder.stdout.readline()  # the other training holds the workdir
    values = flag_definitions.define(flags.FlagValues())
    # No data where it points: a run that did not ask for the lock first would fail on that.
    values(['main', '--mode=train', f'--workdir={tmp_path}', f'--data_dir={tmp_path}/none',
            f'--manual_dir={tmp_path}/none', '--width=0.125', '--image_size=67'])
    experiment = main.experiment_from_flags(values)
    experiment.validate()
    with pytest.raises(workdir_lock.WorkdirInUseError, match='is in use by the training of'):
      main.run(experiment, meshes.mesh(1, 1))
  finally:
    holder.kill()
    holder.wait()
