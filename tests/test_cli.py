"""The command line: summary output and bad flags that fail fast with a clear message."""

import os

import pytest

from tests.cli import problems, run_main


@pytest.mark.slow
def test_summary_of_the_paper_net():
  result = run_main('--mode=summary')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[-2] == 'Total multiply-adds: 724,406,816'
  assert lines[-1] == 'Total params: 60,965,224'
  table = {line.split()[0]: line for line in lines if line.split()[:1] and
           line.split()[0] in ('conv1', 'conv3', 'fc8')}
  assert '55x55' in table['conv1'] and '27x27x96' in table['conv1']
  assert table['conv3'].rstrip().endswith('yes') and '885,120' in table['conv3']
  assert 'No collectives' in result.stdout  # one device holds both towers


@pytest.mark.slow
def test_summary_reports_the_crossings_of_a_tower_mesh():
  result = run_main('--mode=summary', '--mesh=data:2,tower:2', '--cpu_devices=4',
                    '--batch_size=8', '--width=0.125', '--image_size=67', '--num_classes=10')
  assert result.returncode == 0, result.stderr
  rows = [line.split() for line in result.stdout.splitlines()
          if line.startswith(('forward', 'backward'))]
  tower = sorted((r[0], r[2], r[3]) for r in rows if r[1] == 'tower')
  assert tower == [('backward', 'conv3', 'reduce-scatter'), ('backward', 'fc6', 'reduce-scatter'),
                   ('backward', 'fc7', 'reduce-scatter'), ('forward', 'conv3', 'all-gather'),
                   ('forward', 'fc6', 'all-gather'), ('forward', 'fc7', 'all-gather'),
                   ('forward', 'fc8', 'all-reduce')]
  # conv3 gathers 3x3x(16+16) float32 per image; each device receives the other half.
  conv3 = next(r for r in rows if r[:4] == ['forward', 'tower', 'conv3', 'all-gather'])
  assert conv3[5] == f'{3 * 3 * 16 * 4:,}'


@pytest.mark.stderr
@pytest.mark.parametrize('flags, message', [
    (['--towers=3'], 'towers must be 1 or 2'),
    (['--mesh=data:3,tower:1'], 'needs 3 devices but 2 are visible'),
    (['--towers=1', '--mesh=data:1,tower:2'], 'needs the two-tower model'),
    (['--batch_size=5', '--mesh=data:2,tower:1'], 'multiple of the data axis'),
    (['--mode=fly'], 'mode'),
    (['--mesh=2x2'], 'data:D,tower:T'),
    (['--eval_batch_size=5', '--mesh=data:2,tower:1'], 'eval_batch_size=5 must be a positive'),
    (['--max_drops=-1'], 'max_drops must be >= 0'),
])
def test_bad_flags_fail_fast_with_a_clear_message(flags, message):
  result = run_main('--mode=summary', *flags, cpu_devices=2, timeout=60)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
@pytest.mark.stderr
def test_a_first_run_says_what_it_does_in_its_own_words_and_leaves_no_temporary_files(tmp_path):
  """A quickstart-sized first run: demo tars written, TFDS preparation, store, training."""
  temporary = tmp_path / 'tmp'
  temporary.mkdir()
  result = run_main('--mode=train', f'--workdir={tmp_path}/run', '--demo_data',
                    f'--manual_dir={tmp_path}/manual', f'--data_dir={tmp_path}/tfds',
                    '--train_split=train[:90%]', '--eval_split=train[90%:]', '--image_size=67',
                    '--width=0.125', '--init=he', '--standardize', '--batch_size=32',
                    '--num_train_steps=2', '--log_every_steps=1',
                    env={'TMPDIR': str(temporary)})
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(temporary)) == []
  assert 'Download' not in result.stdout and 'Download' not in result.stderr  # nothing is
  # The one warning: the demo's deliberately broken image.
  [warning] = problems(result.stderr)
  assert 'Skipping undecodable image' in warning, result.stderr
  assert 'Preparing imagenet2012 from the tars in' in result.stderr
  assert f'{tmp_path}/run' in result.stderr.splitlines()[-1]  # where the results went
  assert os.path.getsize(tmp_path / 'run' / 'learning_curves.png') > 10_000  # main draws it
