"""Training on the demo ImageNet: steps on every mesh, resume, faults, eval and predict."""

import dataclasses
import glob
import json
import os

import jax
import numpy as np
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import checkpoints
from alexnet_jax import metrics
from alexnet_jax import optimizer
from alexnet_jax import preprocess
from alexnet_jax import synthetic_data
from alexnet_jax import train
from tests import meshes
from tests import training


def _losses(workdir):
  return {r['step']: r['loss'] for r in metrics.read_metrics(f'{workdir}/metrics.jsonl')
          if 'loss' in r}


@pytest.fixture(scope='module')
def uninterrupted(demo, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = training.run(demo, workdir, profile_steps=1)
  return workdir, result


def _one_step(shape):
  mesh = meshes.mesh(*shape)
  opt_config = config_lib.OptimizerConfig()
  step = train.make_train_step(meshes.TINY, opt_config, mesh, batch_size=8, total_steps=10,
                               pca_std=0.1, seed=3,
                               normalizer=preprocess.Normalizer(preprocess.CHANNEL_MEAN))
  batch = next(synthetic_data.synthetic_batches(8, 67, 10, mesh, seed=1))
  with jax.set_mesh(mesh):
    state = train.init_state(meshes.TINY, opt_config, mesh, jax.random.key(0))
    state, metrics_ = step(state, batch)
    state, metrics_ = step(state, batch)  # momentum and dropout of a second step too
  return jax.device_get(state.params), float(metrics_['loss'])


def test_training_steps_are_the_same_on_every_mesh():
  single, loss = _one_step((1, 1))
  for shape in [(1, 2), (2, 2)]:
    params, other_loss = _one_step(shape)
    assert other_loss == pytest.approx(loss, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params, single)


def test_a_short_run_learns_and_leaves_its_files(uninterrupted):
  workdir, result = uninterrupted
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, 7))
  assert np.mean([losses[5], losses[6]]) < np.mean([losses[1], losses[2]])
  assert result['num_examples'] == 10 and 0 <= result['top1'] <= result['top5'] <= 1
  assert json.load(open(f'{workdir}/eval/train_90_step6.json'))['top1'] == result['top1']
  assert os.path.getsize(f'{workdir}/learning_curves.png') > 10_000
  assert glob.glob(f'{workdir}/tensorboard/events.out.tfevents.*')
  assert glob.glob(f'{workdir}/profile/plugins/profile/*/*.xplane.pb')  # --profile_steps
  # Checkpoints: the newest three plus the best by top-1 (eval at 3 and 6).
  assert {4, 6} <= set(checkpoints.Checkpoints(str(workdir), {}).steps())


def test_resumed_run_continues_exactly(demo, uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  training.run(demo, tmp_path, num_train_steps=4)
  training.run(demo, tmp_path)  # resumes from step 4
  resumed, straight = _losses(tmp_path), _losses(workdir)
  assert [resumed[s] for s in (5, 6)] == [straight[s] for s in (5, 6)]  # bitwise
  assert json.load(open(f'{tmp_path}/eval/train_90_step6.json')) == \
      json.load(open(f'{workdir}/eval/train_90_step6.json'))


def test_checkpoint_restores_onto_another_mesh_and_evaluates_the_same(demo, tmp_path):
  result = training.run(demo, tmp_path, shape=(2, 2), num_train_steps=3)
  for shape in [(1, 1), (1, 2)]:
    step, params = train.restore_params(training.MODEL, meshes.mesh(*shape), str(tmp_path))
    assert step == 3
    again = _evaluate(demo, params, shape)
    assert again['top1'] == result['top1'] and again['top5'] == result['top5']
    assert again['loss'] == pytest.approx(result['loss'], rel=1e-5)


def _evaluate(demo, params, shape):
  from alexnet_jax import evaluate  # pylint: disable=import-outside-toplevel
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  mesh = meshes.mesh(*shape)
  config = training.data(demo)
  step = evaluate.make_eval_step(training.MODEL, mesh, preprocess.Normalizer(preprocess.CHANNEL_MEAN))
  with jax.set_mesh(mesh):
    return evaluate.evaluate(step, params, input_pipeline.eval_batches(config, 8, mesh))


def test_non_finite_loss_stops_with_the_step_and_keeps_good_checkpoints(demo, tmp_path):
  exploding = dataclasses.replace(training.OPTIMIZER, learning_rate=1e8)
  with pytest.raises(train.NonFiniteLossError, match=r'at step \d+'):
    training.run(demo, tmp_path, opt=exploding, checkpoint_every_steps=1, num_train_steps=20)
  saved = checkpoints.Checkpoints(str(tmp_path), {}).steps()
  assert saved, 'the first steps were finite and saved'
  _, params = train.restore_params(training.MODEL, meshes.mesh(1, 1), str(tmp_path))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(params)))
  assert all(np.isfinite(r.get('loss', 0)) for r in metrics.read_metrics(
      f'{tmp_path}/metrics.jsonl'))


def _copy_run(source, target):
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(source, target)
  return target


def test_corrupt_and_half_written_checkpoints_are_skipped(demo, uninterrupted, tmp_path):
  workdir = _copy_run(uninterrupted[0], tmp_path / 'run')
  directory = f'{workdir}/checkpoints'
  # Truncate the array data of the newest checkpoint (eval reads the parameters alone, so
  # every data file, not just the largest); leave a half-written newer one.
  newest = max(int(d) for d in os.listdir(directory) if d.isdigit())
  data = glob.glob(f'{directory}/{newest}/state/ocdbt.process_*/d/*')
  assert data
  for path in data:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 3)
  os.makedirs(f'{directory}/{newest + 10}/state')
  # Reading (eval, predict) skips them and touches nothing.
  step, _ = train.restore_params(training.MODEL, meshes.mesh(1, 1),
                                 str(workdir))
  assert step < newest and not os.path.exists(f'{workdir}/corrupt')
  # Training resumes from the newest complete one and moves the broken ones aside.
  training.run(demo, workdir, num_train_steps=newest + 1)
  assert len(os.listdir(f'{workdir}/corrupt')) == 2  # set aside, not deleted
  assert f'{step + 1}' in open(f'{workdir}/metrics.jsonl').read()


def test_a_workdir_whose_checkpoints_are_all_unreadable_is_an_error(uninterrupted, tmp_path):
  workdir = _copy_run(uninterrupted[0], tmp_path / 'run')
  for step in os.listdir(f'{workdir}/checkpoints'):
    if step.isdigit():
      for path in glob.glob(f'{workdir}/checkpoints/{step}/**', recursive=True):
        if os.path.isfile(path):
          open(path, 'w').close()  # every file emptied
  with pytest.raises(checkpoints.NoCheckpointError, match='could be read'):
    train.restore_params(training.MODEL, meshes.mesh(1, 1), str(workdir))


def test_checkpoint_of_another_configuration_is_refused(uninterrupted):
  workdir, _ = uninterrupted
  for change, name in [(dict(width=0.25), 'width'), (dict(towers=1), 'towers'),
                       (dict(num_classes=10), 'num_classes')]:
    other = dataclasses.replace(training.MODEL, **change)
    with pytest.raises(checkpoints.CheckpointMismatchError, match=name):
      train.restore_params(other, meshes.mesh(1, 1), str(workdir))
