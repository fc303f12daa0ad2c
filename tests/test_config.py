"""The experiment object: every flagfile builds a valid one, and each rule fails clearly."""

import dataclasses
import glob
import os

from absl import flags
import pytest

from alexnet_jax import checkpoints
from alexnet_jax import config as config_lib
from alexnet_jax import flags as flag_definitions
from alexnet_jax import main
from tests.cli import ROOT


def _experiment(*argv: str) -> config_lib.Experiment:
  values = flag_definitions.define(flags.FlagValues())
  values(['main', *argv])
  return main.experiment_from_flags(values)


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'experiments', '*.flags'))),
                         ids=os.path.basename)
def test_every_experiment_flagfile_builds_a_valid_experiment(path):
  built = main.experiment_from_flags(flag_definitions.read_flagfile(path))
  built.validate()
  # The data pipeline sees the model's input size and the run's seed, never its own.
  assert built.data.image_size == built.model.image_size
  assert built.data.seed == built.train.seed


def test_flags_fill_the_fields_of_their_configs():
  experiment = _experiment('--towers=1', '--width=0.5', '--lr_step_every=7', '--schedule=step',
                           '--distributed=off', '--crossings=conv3,fc8', '--image=a.jpg,b.png',
                           '--nolrn', '--image_size=99', '--seed=5', '--mesh=data:2,tower:1')
  assert experiment.model == config_lib.ModelConfig(towers=1, width=0.5, lrn=False,
                                                    image_size=99, crossings=('conv3', 'fc8'))
  assert experiment.optimizer.lr_step_every == 7
  assert experiment.processes.distributed == 'off'
  assert experiment.run.image == ('a.jpg', 'b.png')
  assert (experiment.data.image_size, experiment.data.seed) == (99, 5)
  assert experiment.mesh.parsed() == config_lib.MeshShape(2, 1)


def test_defaults_of_flags_are_the_configs_defaults():
  values = flag_definitions.define(flags.FlagValues())
  values(['main'])
  for config_class, names in flag_definitions.CONFIGS.items():
    fields = {field.name: field.default for field in dataclasses.fields(config_class)}
    for name in names:
      if name not in flag_definitions.DEFAULTS:
        want = fields[name]
        assert values[name].value == (list(want) if isinstance(want, tuple) else want), name


@pytest.mark.parametrize('argv, message', [
    (['--mode=train'], '--mode=train needs --workdir'),
    (['--mode=predict', '--workdir=w'], '--mode=predict needs --image'),
    (['--demo_data'], '--demo_data writes the demo tars into --manual_dir'),
    (['--mode=benchmark', '--profile_steps=2'], '--profile_steps writes its trace'),
    (['--num_epochs=0'], '--num_epochs must be a positive number'),
    (['--cpu_devices=0'], '--cpu_devices must be at least 1'),
    (['--image_size=30'], 'too small'),
    (['--mode=visualize', '--workdir=w', '--results'], 'set --runs'),
    (['--augment=inception'], 'it needs --store=none'),
    (['--store_quality=101'], '--store_quality must be in 1..100'),
])
def test_rules_fail_with_the_flag_to_fix(argv, message):
  _experiment('--mode=summary').validate()  # valid without the flag under test
  with pytest.raises(config_lib.UserError, match=message):
    _experiment('--mode=summary', *argv).validate()


def test_the_mesh_is_checked_against_the_devices_and_the_batch():
  experiment = _experiment('--batch_size=6', '--eval_batch_size=8')
  assert experiment.mesh_shape(2) == config_lib.MeshShape(1, 2)
  with pytest.raises(config_lib.UserError, match='batch_size=6 must be a positive multiple'):
    experiment.mesh_shape(8)  # data axis 4
  with pytest.raises(config_lib.UserError, match='needs 4 devices but 2'):
    _experiment('--mesh=data:2,tower:2').mesh_shape(2)
  with pytest.raises(config_lib.UserError, match='batch_size=3 must be a positive multiple'):
    _experiment('--batch_size=3', '--mesh=data:2,tower:1').mesh_shape(2)


def test_the_results_table_reads_its_runs_and_needs_no_workdir():
  _experiment('--mode=visualize', '--results', '--runs=workdirs/quickstart').validate()
  with pytest.raises(config_lib.UserError, match='--mode=visualize needs --workdir'):
    _experiment('--mode=visualize').validate()


@pytest.mark.parametrize('field, value', [('lrn_variant', 'caffe'), ('conv1_padding', 'valid'),
                                          ('pool_rounding', 'ceil'), ('input_convention', 'caffe')])
def test_a_checkpoint_of_another_variant_is_refused_naming_the_field(field, value):
  paper = dataclasses.asdict(config_lib.ModelConfig())
  caffe = dataclasses.asdict(config_lib.ModelConfig(**{field: value}))
  checkpoints.check_compatible(caffe, caffe, 'w')
  with pytest.raises(checkpoints.CheckpointMismatchError, match=f"{field}='{value}' there"):
    checkpoints.check_compatible(caffe, paper, 'w')
  # A checkpoint written before the field existed holds the paper's net.
  checkpoints.check_compatible({k: v for k, v in paper.items() if k != field}, paper, 'w')
  with pytest.raises(checkpoints.CheckpointMismatchError, match=field):
    checkpoints.check_compatible({k: v for k, v in paper.items() if k != field}, caffe, 'w')
