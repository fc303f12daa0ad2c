"""Figures 3 and 4, learning curves and the results table, from a short real run."""

import json
import os
import warnings

import jax
import numpy as np
from PIL import Image
import pytest

from alexnet_jax.tools import figures
from alexnet_jax import train
from alexnet_jax.tools import results
from alexnet_jax.tools import visualize
from tests import meshes
from tests import training

QUERIES, NEIGHBOURS = 4, 6


@pytest.fixture(scope='module')
def trained(demo, tmp_path_factory):
  """A 3-step run, then its figures with training images as queries."""
  workdir = str(tmp_path_factory.mktemp('visualize'))
  training.run(demo, workdir, shape=(1, 2), num_train_steps=3)
  # The queries are the first training images, so each must find itself.
  data = training.data(demo, eval_split='train[:4]')
  summary = visualize.run(training.MODEL, data, meshes.mesh(2, 2), workdir,
                          batch_size=8, queries=QUERIES, neighbours=NEIGHBOURS)
  return workdir, summary


def _png(path) -> np.ndarray:
  return np.asarray(Image.open(path).convert('RGB'))


@pytest.mark.slow
def test_figures_have_the_size_their_grids_define(trained):
  workdir, _ = trained
  # conv1 at width 0.125: 2 towers x 6 kernels of 11 x 11, drawn 44 x 44 with 2 px
  # between: one row per tower, towers 8 px apart, the towers' names on the left.
  assert _png(f'{workdir}/figures/conv1_kernels.png').shape == (
      2 * (44 + 2 + 2) + figures.TOWER_GAP, figures.LABEL_WIDTH + 6 * (44 + 2) + 2, 3)
  # 4 queries x (query + 6 neighbours) of 67 x 67 crops, framed by 3 px, 2 px apart.
  assert _png(f'{workdir}/figures/nearest_neighbours.png').shape == (
      QUERIES * (67 + 6 + 2) + 2, (1 + NEIGHBOURS) * (67 + 6 + 2) + 2, 3)
  assert os.path.getsize(f'{workdir}/figures/learning_curves.png') > 10_000


def test_kernel_grid_puts_tower_1_above_tower_2_in_rows_of_16():
  kernels = np.random.default_rng(0).normal(size=(2, 11, 11, 3, 20))
  grid = figures.kernel_grid(kernels)
  cell, tower_height = 44 + 2, 2 * (44 + 2) + 2 + figures.TOWER_GAP
  assert grid.shape == (2 * tower_height - figures.TOWER_GAP, 16 * cell + 2, 3)
  expected = np.round(255 * figures.normalize_kernels(kernels)).astype(np.uint8)
  for tower, index in [(0, 0), (0, 17), (1, 3), (1, 19)]:
    y = tower * tower_height + 2 + (index // 16) * cell
    x = 2 + (index % 16) * cell
    drawn = grid[y:y + 44:4, x:x + 44:4]               # one screen pixel per kernel pixel
    np.testing.assert_array_equal(drawn, expected[tower, :, :, :, index])
  empty = grid[2 + cell:2 + 2 * cell - 2, 2 + 4 * cell:]  # tower 1, row 2, after kernel 19
  assert (empty == figures.BACKGROUND).all()


def test_the_kernel_figure_names_each_tower_beside_its_rows():
  kernels = np.random.default_rng(0).normal(size=(2, 11, 11, 3, 20))
  labelled, grid = figures.labelled_kernel_grid(kernels), figures.kernel_grid(kernels)
  np.testing.assert_array_equal(labelled[:, figures.LABEL_WIDTH:], grid)
  tower_height = 2 * (44 + 2) + 2
  bands = [labelled[t * (tower_height + figures.TOWER_GAP):][:tower_height,
                                                              :figures.LABEL_WIDTH]
           for t in (0, 1)]
  for band in bands:
    assert (band < 128).any(axis=-1).sum() > 20      # text drawn there
  assert (bands[0] != bands[1]).any()                # 'tower 1' is not 'tower 2'


@pytest.mark.slow
def test_kernel_figure_follows_the_checkpoint_weights(trained, tmp_path):
  workdir, _ = trained
  _, params = train.restore_params(training.MODEL, meshes.mesh(1, 1),
                                   workdir)
  params = jax.device_get(params)
  kernels = params['conv1']['kernel']
  visualize.kernel_figure(params, f'{tmp_path}/before.png')
  changed = kernels.copy()
  changed[0] *= -1                                        # tower 1 only
  visualize.kernel_figure({'conv1': {'kernel': changed}}, f'{tmp_path}/changed.png')
  visualize.kernel_figure({'conv1': {'kernel': 4 * kernels}}, f'{tmp_path}/scaled.png')
  before, after = _png(f'{tmp_path}/before.png'), _png(f'{tmp_path}/changed.png')
  split = 44 + 2 + 2 + figures.TOWER_GAP // 2
  kernels_only = np.s_[:split, figures.LABEL_WIDTH:]
  assert (before[kernels_only] != after[kernels_only]).mean() > 0.5  # tower 1's row, inverted
  np.testing.assert_array_equal(before[split:], after[split:])
  # Each kernel is min-max normalized: scaling it draws the same picture.
  np.testing.assert_array_equal(before, _png(f'{tmp_path}/scaled.png'))
  np.testing.assert_array_equal(before, _png(f'{workdir}/figures/conv1_kernels.png'))


def test_color_fraction_separates_grey_from_colour_kernels(tmp_path):
  plane = np.random.default_rng(0).normal(size=(11, 11, 1, 8))
  grey = np.repeat(plane, 3, axis=2)                        # three equal planes
  opponent = np.concatenate([plane, -plane, 0 * plane], axis=2)   # red minus green
  red = np.concatenate([plane, 0 * plane, 0 * plane], axis=2)
  np.testing.assert_allclose(visualize.color_fraction(grey), 0, atol=1e-12)
  np.testing.assert_allclose(visualize.color_fraction(opponent), 1)
  np.testing.assert_allclose(visualize.color_fraction(red), 2 / 3)
  random = np.random.default_rng(1).normal(size=(11, 11, 3, 96))
  assert visualize.color_fraction(random).mean() == pytest.approx(2 / 3, abs=0.01)
  towers = visualize.kernel_figure({'conv1': {'kernel': np.stack([grey, opponent])}},
                                   f'{tmp_path}/k.png')
  assert [t['tower'] for t in towers] == [1, 2]
  assert towers[0]['mean_color_fraction'] < 1e-9 and towers[1]['mean_color_fraction'] > 0.99


@pytest.mark.slow
def test_a_training_image_is_its_own_nearest_neighbour(trained):
  workdir, summary = trained
  found = summary['nearest_neighbours']
  assert found['searched'] == 90                    # all of train[:90%] (100 images, one corrupt)
  assert len(found['queries']) == QUERIES
  for query in found['queries']:
    distances = [n['distance'] for n in query['neighbours']]
    assert len(distances) == NEIGHBOURS and distances == sorted(distances)
    assert query['neighbours'][0]['file_name'] == query['file_name']
    assert query['neighbours'][0]['label'] == query['label']
    assert distances[0] < 1e-4 * distances[1]
  with open(f'{workdir}/figures/summary.json') as f:
    assert json.load(f)['nearest_neighbours'] == found


def test_nearest_keeps_the_same_neighbours_as_a_full_sort():
  rng = np.random.default_rng(0)
  queries, features = rng.normal(size=(3, 5)), rng.normal(size=(50, 5))
  nearest = visualize.Nearest(queries, 4)
  for start in range(0, 50, 8):
    nearest.add(features[start:start + 8], {'index': np.arange(start, min(start + 8, 50))})
  distances = np.linalg.norm(queries[:, None] - features[None], axis=-1)
  np.testing.assert_array_equal(nearest.examples['index'], np.argsort(distances, 1)[:, :4])
  np.testing.assert_allclose(nearest.distances, np.sort(distances, 1)[:, :4])


@pytest.mark.slow
def test_curves_of_an_interrupted_and_resumed_run_have_each_step_once(trained, tmp_path):
  workdir, _ = trained
  with open(f'{workdir}/metrics.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert [r['step'] for r in lines if 'loss' in r] == [1, 2, 3]
  # The first attempt logged steps 1..3 and evaluated at 3, then died before saving step
  # 3; the resumed run repeated step 3 and its evaluation.
  stale = [dict(r, loss=r['loss'] + 50) if 'loss' in r else dict(r, top1=0.0)
           for r in lines if r['step'] == 3]
  resumed = tmp_path / 'resumed'
  resumed.mkdir()
  with open(resumed / 'metrics.jsonl', 'w') as f:
    for record in [r for r in lines if r['step'] < 3] + stale + lines[-len(stale):]:
      f.write(json.dumps(record) + '\n')
  data, straight = figures.curve_data(str(resumed)), figures.curve_data(workdir)
  for key in data:
    np.testing.assert_array_equal(data[key], straight[key])
  assert list(data['epoch']) == sorted(set(data['epoch'])) and len(data['loss']) == 3
  assert len(data['top1_error']) == 1 and len(data['drops']) == 0
  path = figures.learning_curves([workdir, str(resumed)], f'{tmp_path}/both.png', ['a', 'b'])
  assert os.path.getsize(path) > 10_000


@pytest.mark.slow
def test_results_table_puts_measured_errors_beside_the_paper(trained, tmp_path):
  workdir, summary = trained
  experiments = tmp_path / 'experiments'
  experiments.mkdir()
  (experiments / 'no_lrn.flags').write_text(f'# ablation\n--mode=train\n--workdir={workdir}\n'
                                            '--nolrn\n--demo_data\n')
  known = results.experiments(str(experiments))
  assert known['no_lrn'].lrn is False and results.experiment_of(workdir, known) == 'no_lrn'
  table = results.results_table([workdir], str(experiments))
  with open(f'{workdir}/eval/train_90_step3.json') as f:
    result = json.load(f)
  rows = {line.split(' | ')[0][2:]: line.split(' | ') for line in table.splitlines()
          if line.count(' | ') == 9 and not line.startswith('| experiment')}  # first table
  assert rows['paper'][2:6] == ['40.7', '18.2', '—', '—']
  assert rows['no_lrn'][2:9] == ['42.1 (+1.4)', '19.4 (+1.2)', f"{100 * (1 - result['top1']):.1f}",
                                 f"{100 * (1 - result['top5']):.1f}",
                                 'demo (8 drawn classes), `train[90%:]`', '1', '3']
  assert 'No ImageNet run has been measured yet' in table
  (trained1, initial1), (trained2, initial2) = (
      (t['mean_color_fraction'], t['initial_mean_color_fraction']) for t in summary['towers'])
  assert (f'| no_lrn | 3 | {trained1:.3f} / {trained2:.3f} | {initial1:.3f} / {initial2:.3f} |'
          in table)


def test_a_short_last_loss_window_is_drawn_at_its_middle_not_as_a_dip(tmp_path):
  # Logged every 10 steps, 10 steps an epoch; the run ends at step 33 with a 3-step window.
  # The loss falls by 1 a step: each logged mean is the loss at its window's middle.
  ends = [10, 20, 30, 33]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    for start, end in zip([0] + ends, ends):
      mean = np.mean([100.0 - s for s in range(start + 1, end + 1)])
      f.write(json.dumps({'step': end, 'loss': mean, 'learning_rate': 0.01,
                          'epoch': end / 10}) + '\n')
  data = figures.curve_data(str(tmp_path))
  np.testing.assert_allclose(data['loss_epoch'], [0.5, 1.5, 2.5, 3.15])
  np.testing.assert_allclose(data['epoch'], [1.0, 2.0, 3.0, 3.3])
  # On one straight line (no dip): loss = 99.5 - 10 * epoch at every point.
  np.testing.assert_allclose(data['loss'], 99.5 - 10 * data['loss_epoch'])


def test_curves_of_a_workdir_named_in_any_script_are_drawn_without_a_warning(tmp_path):
  # Its name is the legend's label; DejaVu Sans, matplotlib's font, has no CJK characters.
  workdir = tmp_path / '学习 run'
  workdir.mkdir()
  (workdir / 'metrics.jsonl').write_text(
      '{"step": 1, "loss": 2.0, "learning_rate": 0.01, "epoch": 0.5}\n'
      '{"step": 2, "top1": 0.5, "top5": 0.9, "epoch": 1.0}\n')
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # matplotlib warns of each glyph it lacks
    figures.learning_curves([str(workdir)], str(tmp_path / 'curves.png'))
  assert (tmp_path / 'curves.png').stat().st_size > 10_000
