"""Training on the demo ImageNet: steps on every mesh, resume, faults, eval and predict."""

import dataclasses
import glob
import json
import math
import os
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import checkpoints
from alexnet_jax import metrics
from alexnet_jax import parallel
from alexnet_jax import preprocess
from alexnet_jax import synthetic_data
from alexnet_jax import train
from tests import meshes
from tests import reference
from tests import stream
from tests import training


def _losses(workdir):
  return {r['step']: r['loss'] for r in metrics.read_metrics(f'{workdir}/metrics.jsonl')
          if 'loss' in r}


@pytest.fixture(scope='module')
def uninterrupted(demo, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = training.run(demo, workdir, profile_steps=1)
  return workdir, result


@pytest.fixture(scope='module')
def trainer():
  """The train step of the demo runs (tests/training.py) on one device, compiled once."""
  return _trainer(training.MODEL, training.OPTIMIZER, batch_size=training.LOOP.batch_size,
                  total_steps=training.LOOP.num_train_steps,
                  pca_std=config_lib.DataConfig.pca_std, seed=training.LOOP.seed,
                  normalizer=preprocess.Normalizer(preprocess.CHANNEL_MEAN))


def _trainer(model_config, opt_config, **step_options):
  """The mesh (1, 1), its jitted step and init_state(rng) for one configuration."""
  mesh = meshes.mesh(1, 1)
  return types.SimpleNamespace(
      mesh=mesh, step=train.make_train_step(model_config, opt_config, mesh, **step_options),
      init_state=lambda rng: train.init_state(model_config, opt_config, mesh, rng))


def _one_step(shape):
  mesh = meshes.mesh(*shape)
  opt_config = config_lib.OptimizerConfig()
  step = train.make_train_step(meshes.TINY, opt_config, mesh, batch_size=8, total_steps=10,
                               pca_std=0.1, seed=3,
                               normalizer=preprocess.Normalizer(preprocess.CHANNEL_MEAN))
  batch = next(synthetic_data.synthetic_batches(8, 67, 10, mesh, seed=1))
  with jax.set_mesh(mesh):
    state = train.init_state(meshes.TINY, opt_config, mesh, jax.random.key(0))
    layout = [leaf.sharding for leaf in jax.tree.leaves(state)]
    state, metrics_ = step(state, batch)
    # The state comes back in the layout init_state made: the step compiles once.
    assert all(leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
               for leaf, sharding in zip(jax.tree.leaves(state), layout, strict=True))
    state, metrics_ = step(state, batch)  # momentum and dropout of a second step too
  return jax.device_get(state.params), float(metrics_['loss'])


@pytest.mark.slow
def test_training_steps_are_the_same_on_every_mesh():
  single, loss = _one_step((1, 1))
  for shape in [(1, 2), (2, 2)]:
    params, other_loss = _one_step(shape)
    assert other_loss == pytest.approx(loss, rel=1e-5)
    # float32 rounding of other reduction orders (jax 0.12 differs from 0.10 by ~1e-6).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 params, single)


def test_two_training_steps_are_the_papers_sgd_on_the_reference_net():
  # Without dropout and colour noise a step is the grouped reference net's gradient fed
  # to the update rule written out (tests/reference.py): nothing shared but the weights.
  config = dataclasses.replace(meshes.TINY, dropout_rate=0.0)
  # Standardized inputs keep the loss near log(10), where the steps stay small.
  normalizer = preprocess.Normalizer(preprocess.CHANNEL_MEAN, preprocess.CHANNEL_STD)
  plain = _trainer(config, config_lib.OptimizerConfig(), batch_size=8, total_steps=10,
                   pca_std=0.0, seed=3, normalizer=normalizer)
  mesh = plain.mesh
  batches = synthetic_data.synthetic_batches(8, 67, 10, mesh, seed=1)
  host_batches, losses = [], []
  with jax.set_mesh(mesh):
    state = plain.init_state(jax.random.key(0))
    for _ in range(2):
      batch = next(batches)
      state, metrics_ = plain.step(state, batch)
      losses.append(float(metrics_['loss']))
      inputs = (np.asarray(batch['images'], np.float32) - normalizer.mean) / normalizer.std
      host_batches.append((inputs, np.asarray(batch['labels'])))
  start = meshes.host_params()
  want_losses, want = reference.paper_sgd(start, host_batches, learning_rate=0.01)
  assert losses == pytest.approx(want_losses, rel=1e-5)
  # The parameters moved as the rule says, to 0.1% of each layer's largest move.
  moved = lambda params: jax.tree.map(lambda p, p0: np.asarray(p) - np.asarray(p0), params, start)
  jax.tree.map(lambda got, expected: np.testing.assert_allclose(
      got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max()),
               moved(jax.device_get(state.params)), moved(want))


def test_the_training_step_holds_no_constant_larger_than_a_batch():
  """XLA evaluates at compile time what depends on no input ("Constant folding an
  instruction is taking > 1s" when slow), starting from the program's constants. The
  step's are the colour statistics, the PCA matrix and threefry's rotations (one value
  broadcast costs nothing to fold); a parameter, a digest's weights or an index table
  captured as a constant would show here."""
  batch = 2 * meshes.BATCH
  text = train.lower_train_step(meshes.TINY, meshes.mesh(1, 2), batch).as_text()
  constants = re.findall(r'stablehlo.constant dense<([^>]*)> : tensor<([^>]*)>', text)
  arrays = [dims for value, dims in constants if value[0] in '"[']  # not one value broadcast
  assert arrays, 'no constant array found: the pattern no longer matches the program text'
  large = [dims for dims in arrays if math.prod(map(int, dims.split('x')[:-1])) > batch]
  assert not large, large


@pytest.mark.slow
def test_a_short_run_learns_and_leaves_its_files(uninterrupted):
  workdir, result = uninterrupted
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, 7))
  assert np.mean([losses[5], losses[6]]) < np.mean([losses[1], losses[2]])
  assert result['num_examples'] == 10 and 0 <= result['top1'] <= result['top5'] <= 1
  assert json.load(open(f'{workdir}/eval/train_90_step6.json'))['top1'] == result['top1']
  assert glob.glob(f'{workdir}/tensorboard/events.out.tfevents.*')
  assert glob.glob(f'{workdir}/profile/plugins/profile/*/*.xplane.pb')  # --profile_steps
  # Checkpoints: the newest three plus the best by top-1 (eval at 3 and 6).
  assert {4, 6} <= set(checkpoints.Checkpoints(str(workdir), {}).steps())


@pytest.mark.slow
def test_step_n_trained_on_the_batch_at_stream_position_n_times_batch(demo, uninterrupted,
                                                                    trainer):
  # The batches come from the split's file (tests/stream.py), not through the pipeline:
  # a run one batch early or late, fresh or resumed, logs other losses.
  workdir, _ = uninterrupted
  cfg, batch = training.data(demo), training.LOOP.batch_size
  data = parallel.batch_sharding(trainer.mesh)
  expected = []
  with jax.set_mesh(trainer.mesh):
    state = trainer.init_state(jax.random.key(training.LOOP.seed))
    for step in range(training.LOOP.num_train_steps):
      images, labels = stream.train_batch(cfg, step, batch)
      state, metrics_ = trainer.step(state, {'images': jax.device_put(images, data),
                                             'labels': jax.device_put(labels, data)})
      expected.append(float(metrics_['loss']))
  logged = _losses(workdir)  # the loss logged at step N + 1 is that of step N
  assert [logged[step + 1] for step in range(len(expected))] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_checkpoints_saved_at_an_evaluation_carry_its_top1(uninterrupted):
  workdir, _ = uninterrupted
  saved = checkpoints.Checkpoints(str(workdir), {}, read_only=True)
  try:
    carried = {step: saved.manager.metrics(step) for step in saved.steps()}
  finally:
    saved.close()
  top1 = {step: json.load(open(f'{workdir}/eval/train_90_step{step}.json'))['top1']
          for step in (3, 6)}
  # Saved at 2, 3, 4 and 6, evaluated at 3 and 6; the newest three are kept.
  assert carried == {3: {'top1': top1[3]}, 4: None, 6: {'top1': top1[6]}}


def test_the_best_checkpoint_outlives_rotation_and_restarts_and_eval_finds_it(trainer, tmp_path):
  # Keeping one recent checkpoint, the best by top-1 is older than the newest, and must
  # survive saves made after a restart (a resumed run) too.
  config = dataclasses.asdict(training.MODEL)
  with jax.set_mesh(trainer.mesh):
    state = trainer.init_state(jax.random.key(0))
  top1 = {1: 0.2, 2: 0.6, 3: None, 4: 0.1, 5: 0.3, 6: None}
  for steps in ((1, 2, 3), (4, 5, 6)):
    saved = checkpoints.Checkpoints(str(tmp_path), config, keep=1)
    for step in steps:
      params = jax.tree.map(lambda p, step=step: p * step, state.params)  # tells them apart
      saved.save(step, state.replace(step=jnp.int32(step), params=params),
                 None if top1[step] is None else {'top1': top1[step]})
    saved.close()
  assert sorted(int(d) for d in os.listdir(f'{tmp_path}/checkpoints') if d.isdigit()) == [2, 6]
  # eval and predict restore what --checkpoint_step names, else the newest.
  step, params = train.restore_params(training.MODEL, trainer.mesh, str(tmp_path), step=2)
  assert step == 2
  jax.tree.map(lambda got, p: np.testing.assert_array_equal(got, 2 * np.asarray(p)),
               jax.device_get(params), jax.device_get(state.params))
  assert train.restore_params(training.MODEL, trainer.mesh, str(tmp_path))[0] == 6


@pytest.mark.slow
def test_resumed_run_continues_exactly(demo, uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  training.run(demo, tmp_path, num_train_steps=4)
  training.run(demo, tmp_path)  # resumes from step 4
  resumed, straight = _losses(tmp_path), _losses(workdir)
  assert [resumed[s] for s in (5, 6)] == [straight[s] for s in (5, 6)]  # bitwise
  assert json.load(open(f'{tmp_path}/eval/train_90_step6.json')) == \
      json.load(open(f'{workdir}/eval/train_90_step6.json'))


@pytest.mark.slow
def test_a_run_through_the_store_resumes_exactly(demo, tmp_path):
  # The store's squares, shuffled, cropped, flipped and coloured on the device, with the
  # mean image: a resumed run reads and augments what the uninterrupted one did.
  from alexnet_jax.data import mean_image  # pylint: disable=import-outside-toplevel
  cfg = training.data(demo, store='jpeg', augment='paper', shuffle_buffer=32, mean='pixel')
  straight = training.run(demo, tmp_path / 'straight', data_config=cfg)
  training.run(demo, tmp_path / 'resumed', data_config=cfg, num_train_steps=4)
  resumed = training.run(demo, tmp_path / 'resumed', data_config=cfg)  # from step 4
  losses = _losses(tmp_path / 'resumed'), _losses(tmp_path / 'straight')
  assert [losses[0][s] for s in (5, 6)] == [losses[1][s] for s in (5, 6)]  # bitwise
  assert [resumed[k] for k in ('top1', 'loss')] == [straight[k] for k in ('top1', 'loss')]
  assert os.path.exists(tmp_path / 'resumed' / os.path.basename(
      mean_image.cached_path(cfg)))  # a part's mean image, kept in the workdir


@pytest.mark.slow
def test_checkpoint_restores_onto_another_mesh_and_evaluates_the_same(demo, tmp_path):
  result = training.run(demo, tmp_path, shape=(2, 2), num_train_steps=3)
  for shape in [(1, 1), (1, 2)]:
    step, params = train.restore_params(training.MODEL, meshes.mesh(*shape), str(tmp_path))
    assert step == 3
    again = _evaluate(demo, params, shape)
    assert again['top1'] == result['top1'] and again['top5'] == result['top5']
    assert again['loss'] == pytest.approx(result['loss'], rel=1e-5)
  # What every mesh reports is what the grouped reference net scores on the eval
  # examples read from their file (one crop each, the channel mean subtracted).
  crops, labels = stream.eval_examples(training.data(demo))
  top1, top5, loss = reference.scores(jax.device_get(params),
                                      crops[:, 0] - preprocess.CHANNEL_MEAN, labels)
  assert result['num_examples'] == len(labels)
  assert (result['top1'], result['top5']) == pytest.approx((top1, top5), abs=1e-9)
  assert result['loss'] == pytest.approx(loss, rel=1e-4)


def _evaluate(demo, params, shape):
  from alexnet_jax import evaluate  # pylint: disable=import-outside-toplevel
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  mesh = meshes.mesh(*shape)
  config = training.data(demo)
  step = evaluate.make_eval_step(training.MODEL, mesh, preprocess.Normalizer(preprocess.CHANNEL_MEAN))
  with jax.set_mesh(mesh):
    return evaluate.evaluate(step, params, input_pipeline.eval_batches(config, 8, mesh))


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_workdir_whose_checkpoints_are_all_unreadable_is_an_error(demo, uninterrupted,
                                                                    tmp_path):
  workdir = _copy_run(uninterrupted[0], tmp_path / 'run')
  steps = [step for step in os.listdir(f'{workdir}/checkpoints') if step.isdigit()]
  for step in steps:
    for path in glob.glob(f'{workdir}/checkpoints/{step}/**', recursive=True):
      if os.path.isfile(path):
        open(path, 'w').close()  # every file emptied, the metrics too
  with pytest.raises(checkpoints.NoCheckpointError, match='could be read'):
    train.restore_params(training.MODEL, meshes.mesh(1, 1), str(workdir))
  # Training stops rather than start afresh: it sets aside those whose metrics file is torn
  # (orbax cannot list them), leaves the rest in place and deletes nothing.
  with pytest.raises(checkpoints.NoCheckpointError, match='could be read') as error:
    training.run(demo, workdir)
  set_aside = [name.split('-')[0] for name in os.listdir(f'{workdir}/corrupt')]
  left = [step for step in os.listdir(f'{workdir}/checkpoints') if step.isdigit()]
  assert set_aside and sorted(set_aside + left) == sorted(steps)
  assert all(f'step {step}' in str(error.value) for step in left)


@pytest.mark.slow
def test_checkpoint_of_another_configuration_is_refused(uninterrupted):
  workdir, _ = uninterrupted
  for change, name in [(dict(width=0.25), 'width'), (dict(towers=1), 'towers'),
                       (dict(num_classes=10), 'num_classes')]:
    other = dataclasses.replace(training.MODEL, **change)
    with pytest.raises(checkpoints.CheckpointMismatchError, match=name):
      train.restore_params(other, meshes.mesh(1, 1), str(workdir))


def _data_files(checkpoint):
  """The files of a checkpoint's state, largest first."""
  files = [f for f in glob.glob(f'{checkpoint}/state/**', recursive=True) if os.path.isfile(f)]
  return sorted(files, key=os.path.getsize, reverse=True)


def _overwrite(path, size=4096, seed=0, fraction=0.5):
  with open(path, 'r+b') as f:
    f.seek(int(os.path.getsize(path) * fraction))
    f.write(np.random.default_rng(seed).bytes(size))


def _overwrite_where_orbax_reads_it_without_error(checkpoint):
  """4 KB of random bytes in a data file of the checkpoint, where orbax still reads it.

  The compressed chunks carry no checksum, so most such places decode to other values
  without a word (issue 12); a few hit a header and fail to read. This picks the former,
  where the parameters change (eval and predict read those alone). The parameters and
  the optimizer's state may lie in different files (as jax 0.12 writes them): each of
  the largest files is tried.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  reader = ocp.StandardCheckpointer()
  parameters = lambda: jax.tree.leaves(reader.restore(f'{checkpoint}/state')['params'])
  original = parameters()
  for path in _data_files(checkpoint)[:3]:
    with open(path, 'rb') as f:
      intact = f.read()
    for attempt, fraction in enumerate((0.5, 0.3, 0.7, 0.4, 0.6, 0.2, 0.8)):
      _overwrite(path, seed=attempt, fraction=fraction)
      try:
        read = parameters()
        if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(read, original)):
          return
      except Exception:  # pylint: disable=broad-except
        pass
      with open(path, 'wb') as f:
        f.write(intact)
  raise AssertionError(f'no overwrite in {checkpoint} went unnoticed by orbax')


@pytest.mark.slow
def test_bytes_overwritten_in_a_checkpoint_fail_its_digests_and_an_older_one_is_used(
    demo, uninterrupted, tmp_path, caplog):
  workdir = _copy_run(uninterrupted[0], tmp_path / 'run')
  newest = max(checkpoints.Checkpoints(str(workdir), {}).steps())
  _overwrite_where_orbax_reads_it_without_error(f'{workdir}/checkpoints/{newest}')
  step, _ = train.restore_params(training.MODEL, meshes.mesh(1, 1), str(workdir))
  assert step < newest and not os.path.exists(f'{workdir}/corrupt')  # eval moves nothing
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert [w for w in warnings if f'Checkpoint {newest} ' in w and 'digests' in w], warnings
  # Training resumes from the older one, with finite losses, and sets the bad one aside.
  training.run(demo, workdir, num_train_steps=newest + 1)
  assert [d.split('-')[0] for d in os.listdir(f'{workdir}/corrupt')] == [str(newest)]
  assert np.isfinite(_losses(workdir)[step + 1])


@pytest.mark.slow
def test_a_checkpoint_holding_nan_is_skipped(uninterrupted, tmp_path):
  workdir = _copy_run(uninterrupted[0], tmp_path / 'run')
  mesh = meshes.mesh(1, 1)
  store = checkpoints.Checkpoints(str(workdir), dataclasses.asdict(training.MODEL))
  state = store.restore(train.abstract_state(training.MODEL, training.OPTIMIZER, mesh))
  good = int(state.step)
  poisoned = state.params['fc6']['kernel'].at[0, 0, 0].set(np.nan)
  store.save(good + 1, state.replace(params={**state.params,
                                             'fc6': {**state.params['fc6'], 'kernel': poisoned}}))
  store.close()  # saved with its digests: the file is intact, the values are not
  step, _ = train.restore_params(training.MODEL, mesh, str(workdir))
  assert step == good


@pytest.mark.slow
def test_a_checkpoint_of_another_state_layout_is_refused_and_nothing_moves(uninterrupted,
                                                                          tmp_path):
  workdir = _copy_run(uninterrupted[0], tmp_path / 'run')
  before = sorted(os.listdir(f'{workdir}/checkpoints'))
  wanted = train.abstract_state(training.MODEL, training.OPTIMIZER, meshes.mesh(1, 1))
  # What another version of the code would ask for: one more layer, another fc8 shape.
  fc8 = wanted.params['fc8']['kernel']
  other = wanted.replace(params={**wanted.params, 'fc9': {'bias': wanted.params['fc8']['bias']},
                                 'fc8': {**wanted.params['fc8'], 'kernel': jax.ShapeDtypeStruct(
                                     fc8.shape[:-1] + (7,), fc8.dtype, sharding=fc8.sharding)}})
  store = checkpoints.Checkpoints(str(workdir), dataclasses.asdict(training.MODEL))
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'params/fc9/bias is not in the checkpoint.*params/fc8/kernel is '
                           r'float32\[2, 256, 1000\] there, float32\[2, 256, 7\] here'):
    store.restore(other)
  store.close()
  assert not os.path.exists(f'{workdir}/corrupt')
  assert sorted(os.listdir(f'{workdir}/checkpoints')) == before


@pytest.mark.slow
def test_a_workdir_whose_checkpoints_all_fail_never_restarts_from_step_0(demo, uninterrupted,
                                                                         tmp_path):
  workdir = _copy_run(uninterrupted[0], tmp_path / 'run')
  steps = checkpoints.Checkpoints(str(workdir), {}).steps()
  for step in steps:
    _overwrite_where_orbax_reads_it_without_error(f'{workdir}/checkpoints/{step}')
  lines = open(f'{workdir}/metrics.jsonl').read()
  for _ in range(2):  # and again: nothing was moved, so nothing looks like a fresh start
    with pytest.raises(checkpoints.NoCheckpointError, match='could be read.*Nothing was moved'):
      training.run(demo, workdir, num_train_steps=8)
    assert checkpoints.Checkpoints(str(workdir), {}).steps() == steps
  assert not os.path.exists(f'{workdir}/corrupt')
  assert open(f'{workdir}/metrics.jsonl').read() == lines


@pytest.mark.slow
def test_resuming_with_another_batch_is_refused_or_continues_after_the_examples_seen(
    demo, tmp_path):
  from alexnet_jax import resume  # pylint: disable=import-outside-toplevel
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  training.run(demo, tmp_path, num_train_steps=4)  # batch 8: 32 examples seen
  with pytest.raises(resume.BatchChangeError, match='--allow_batch_change'):
    training.run(demo, tmp_path, batch_size=16, num_train_steps=6)
  training.run(demo, tmp_path, batch_size=16, num_train_steps=6, allow_batch_change=True)
  store = checkpoints.Checkpoints(str(tmp_path), {})
  assert store.progress(6) == {'batch_size': 16, 'examples_seen': 32 + 2 * 16}
  steps_per_epoch = 90 // 16  # train[:90%] of the demo's 100 images
  epochs = {r['step']: r['epoch'] for r in metrics.read_metrics(f'{tmp_path}/metrics.jsonl')
            if 'loss' in r}
  assert epochs[5] == pytest.approx((32 + 16) / (steps_per_epoch * 16))
  # Step 5's batch of 16 is the stream's examples 32..47: batches 4 and 5 at batch 8.
  config = training.data(demo)
  at_16 = next(input_pipeline.train_dataset(config, 16, start_position=32).as_numpy_iterator())
  at_8 = input_pipeline.train_dataset(config, 8, start_position=32).as_numpy_iterator()
  first, second = next(at_8), next(at_8)
  np.testing.assert_array_equal(at_16['labels'], np.concatenate([first['labels'],
                                                                 second['labels']]))
  np.testing.assert_array_equal(at_16['images'], np.concatenate([first['images'],
                                                                 second['images']]))
