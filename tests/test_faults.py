"""Real processes: SIGTERM and Ctrl-C save and exit, kill -9 loses only unsaved steps, the
workdir lock, a full disk, a read-only workdir, a torn metrics line, bad input."""

import asyncio
import gc
import glob
import importlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import metrics
from alexnet_jax.data import square_store
from tests import cli

STEPS = 10


def _flags(demo, workdir, **overrides):
  flags = dict(mode='train', workdir=str(workdir), data_dir=demo.data_dir,
               manual_dir=demo.manual_dir, train_split='train[:90%]', eval_split='train[90%:]',
               image_size=67, width=0.125, init='he', num_classes=1000, batch_size=8,
               learning_rate=0.001, schedule='constant', shuffle_buffer=32,
               num_train_steps=STEPS, eval_every_steps=5, checkpoint_every_steps=2,
               log_every_steps=1)
  flags.update(overrides)
  return [f'--{name}={value}' for name, value in flags.items()]


def _start(args, stderr=subprocess.PIPE):
  # Ctrl-C as in a terminal even where the tests run with SIGINT ignored (a background
  # job), which the child would inherit and rightly respect.
  return subprocess.Popen([sys.executable, '-m', 'alexnet_jax.main', *args], cwd=cli.ROOT,
                          env=cli.environment(), stdout=subprocess.PIPE, stderr=stderr,
                          text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_step(workdir, step, process, timeout=240):
  """Waits until metrics.jsonl reports `step` (the process logs every step)."""
  deadline = time.time() + timeout
  path = f'{workdir}/metrics.jsonl'
  while time.time() < deadline:
    assert process.poll() is None, process.communicate()
    if os.path.exists(path) and any(r['step'] >= step for r in metrics.read_metrics(path)):
      return
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


def _losses(workdir):
  return {r['step']: r['loss'] for r in metrics.read_metrics(f'{workdir}/metrics.jsonl')
          if 'loss' in r}


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(f'{workdir}/checkpoints') if d.isdigit())


@pytest.fixture(scope='module')
def straight_run(demo, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  result = cli.run_main(*_flags(demo, workdir))
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.mark.stderr
@pytest.mark.slow
def test_kill_9_resumes_from_the_newest_complete_checkpoint_exactly(demo, straight_run, tmp_path):
  killed_at = int(np.random.default_rng().integers(4, STEPS - 1))
  process = _start(_flags(demo, tmp_path))
  _wait_for_step(tmp_path, killed_at, process)
  while not (os.path.isdir(f'{tmp_path}/checkpoints') and _checkpoint_steps(tmp_path)):
    assert process.poll() is None  # a slow machine: wait for the first save to land
    time.sleep(0.05)
  process.kill()  # SIGKILL: no handler runs
  process.communicate()
  # Saves every 2 steps are asynchronous: the newest may have been in flight at the kill and
  # is then missing; what was lost is only the steps after the newest complete one.
  saved = _checkpoint_steps(tmp_path)
  assert saved
  resumed = cli.run_main(*_flags(demo, tmp_path))
  assert resumed.returncode == 0, resumed.stderr
  assert f'Restored step {max(saved)}' in resumed.stderr
  straight = _losses(straight_run)
  again = _losses(tmp_path)
  assert [again[s] for s in range(max(saved) + 1, STEPS + 1)] == \
      [straight[s] for s in range(max(saved) + 1, STEPS + 1)]


@pytest.mark.stderr
@pytest.mark.slow
@pytest.mark.parametrize('signum, said', [(signal.SIGTERM, 'after SIGTERM; checkpoint saved'),
                                          (signal.SIGINT, 'after Ctrl-C; checkpoint saved')],
                         ids=['sigterm', 'ctrl_c'])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_and_exits_cleanly(demo, tmp_path, signum, said):
  process = _start(_flags(demo, tmp_path, num_train_steps=1000, checkpoint_every_steps=1000,
                          eval_every_steps=1000))
  _wait_for_step(tmp_path, 3, process)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr
  saved = _checkpoint_steps(tmp_path)
  assert len(saved) == 1 and saved[0] >= 3
  assert said in stderr
  assert 'Traceback' not in stderr and 'KeyboardInterrupt' not in stderr


@pytest.mark.stderr
@pytest.mark.slow
def test_eval_mode_reports_what_training_reported(demo, straight_run):
  # With TensorFlow's and orbax's defaults: nothing but its own INFO lines on stderr.
  result = cli.run_main(*_flags(demo, straight_run, mode='eval'))
  assert result.returncode == 0, result.stderr
  assert cli.problems(result.stderr) == []
  records = [r for r in metrics.read_metrics(f'{straight_run}/metrics.jsonl') if 'top1' in r]
  final = json.load(open(f'{straight_run}/eval/train_90_step{STEPS}.json'))
  assert final['top1'] == records[-1]['top1'] and final['top5'] == records[-1]['top5']
  assert f'at step {STEPS}' in result.stdout


@pytest.mark.stderr
@pytest.mark.slow
def test_eval_skips_a_truncated_checkpoint_with_one_warning_and_nothing_else(demo, straight_run,
                                                                           tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(straight_run, workdir)
  newest = _checkpoint_steps(workdir)[-1]
  data = [f for f in glob.glob(f'{workdir}/checkpoints/{newest}/state/**/d/*', recursive=True)]
  for path in data:
    os.truncate(path, os.path.getsize(path) // 3)
  result = cli.run_main(*_flags(demo, workdir, mode='eval'))
  assert result.returncode == 0, result.stderr
  assert f'at step {_checkpoint_steps(workdir)[-2]}' in result.stdout  # the older one
  warnings = cli.problems(result.stderr)
  assert len(warnings) == 1 and f'Checkpoint {newest} ' in warnings[0], warnings


@pytest.mark.stderr
@pytest.mark.slow
def test_a_checkpoint_whose_metadata_file_is_emptied_is_unverified_and_set_aside(
    demo, straight_run, tmp_path):
  # Its digests lived in that file: without them the arrays cannot be verified.
  workdir = tmp_path / 'run'
  shutil.copytree(straight_run, workdir)
  newest, older = _checkpoint_steps(workdir)[-1], _checkpoint_steps(workdir)[-2]
  (workdir / 'checkpoints' / str(newest) / '_CHECKPOINT_METADATA').write_text('')
  result = cli.run_main(*_flags(demo, workdir, num_train_steps=STEPS + 1))
  assert result.returncode == 0, result.stderr
  [warning] = cli.problems(result.stderr)
  assert f'Checkpoint {newest} ' in warning and 'cannot be verified' in warning
  assert f'Restored step {older} ' in result.stderr
  assert [d.split('-')[0] for d in os.listdir(workdir / 'corrupt')] == [str(newest)]
  assert _losses(workdir)[STEPS] == _losses(straight_run)[STEPS]  # step 10 again, the same


def _abandoned_failed_task(filename: str) -> None:
  """A task of code in `filename` that failed on a loop closed without asking for its error:
  what orbax's reads leave behind when a restore gives up."""
  namespace = {}
  exec(compile('async def read():\n  raise ValueError("truncated")\n', filename, 'exec'),
       namespace)
  loop = asyncio.new_event_loop()
  loop.create_task(namespace['read']())
  loop.run_until_complete(asyncio.sleep(0))  # the read fails in this turn of the loop
  loop.close()


def test_asyncio_says_nothing_of_the_reads_orbax_abandoned(caplog):
  # The race: asyncio logs such a task's error whenever the garbage collector gets to it.
  importlib.import_module('alexnet_jax.checkpoints')  # which installs the filter
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    for filename in ('/venv/site-packages/orbax/checkpoint/_src/serialization/read.py',
                     '/home/me/mine.py'):
      _abandoned_failed_task(filename)
      gc.collect()
  [record] = caplog.records  # the task of other code is still reported
  assert record.getMessage().startswith('Task exception was never retrieved')
  assert '/home/me/mine.py' in record.getMessage()


@pytest.mark.slow
def test_eval_with_10_crops_writes_its_own_result_beside_the_1_crop_one(demo, straight_run):
  one_crop = f'{straight_run}/eval/train_90_step{STEPS}.json'
  before = open(one_crop).read()
  result = cli.run_main(*_flags(demo, straight_run, mode='eval', eval_crops=10))
  assert result.returncode == 0, result.stderr
  ten_crops = f'{straight_run}/eval/train_90_step{STEPS}_crops10.json'
  assert f'Wrote {ten_crops}' in result.stdout
  assert json.load(open(ten_crops))['crops'] == 10 and open(one_crop).read() == before


@pytest.mark.stderr
@pytest.mark.slow
def test_predict_prints_top5_and_refuses_a_file_that_is_not_an_image(demo, straight_run,
                                                                      tmp_path):
  image = os.path.join(demo.manual_dir, 'example.png')
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.new('RGB', (80, 60), (200, 30, 30)).save(image)
  not_image = tmp_path / 'notes.jpg'
  not_image.write_text('this is text, not pixels')
  good = cli.run_main(*_flags(demo, straight_run, mode='predict', image=image))
  assert good.returncode == 0, good.stderr
  ranks = [line for line in good.stdout.splitlines() if line.strip()[:2] in ('1.', '5.')]
  assert len(ranks) == 2 and '%' in ranks[0]
  bad = cli.run_main(*_flags(demo, straight_run, mode='predict', image=str(not_image)))
  assert bad.returncode != 0 and 'notes.jpg' in bad.stderr and 'Traceback' not in bad.stderr


@pytest.mark.stderr
@pytest.mark.slow
def test_eval_without_checkpoints_is_a_clear_error(demo, tmp_path):
  result = cli.run_main(*_flags(demo, tmp_path, mode='eval'))
  assert result.returncode != 0
  assert 'no checkpoints' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.stderr
@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_saving(demo, tmp_path):
  process = _start(_flags(demo, tmp_path, num_train_steps=1000, checkpoint_every_steps=1000,
                          eval_every_steps=1000))
  _wait_for_step(tmp_path, 3, process)
  process.send_signal(signal.SIGINT)
  time.sleep(0.05)  # two presses; the save and exit the first asks for take far longer
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 130, stderr
  assert 'stopped at once by a second Ctrl-C' in stderr and 'checkpoint saved' not in stderr
  assert 'Traceback' not in stderr


@pytest.mark.stderr
@pytest.mark.slow
def test_a_second_training_on_a_workdir_in_use_stops_at_once_and_a_dead_holder_is_replaced(
    demo, tmp_path):
  workdir = tmp_path / 'run'
  holder = _start(_flags(demo, workdir, num_train_steps=1000, eval_every_steps=1000))
  _wait_for_step(workdir, 1, holder)
  second, compiled = cli.run_main_recording_compiles(tmp_path / 'cache',
                                                     *_flags(demo, workdir))
  assert second.returncode == 1 and not compiled, second.stderr
  [line] = cli.problems(second.stderr)
  assert f'in use by the training of process {holder.pid} on host {socket.gethostname()}' in line
  holder.kill()  # kill -9: the lock file still names it
  holder.communicate()
  assert str(holder.pid) in (workdir / 'lock').read_text()
  again = cli.run_main(*_flags(demo, workdir, num_train_steps=2))
  assert again.returncode == 0, again.stderr
  assert f'from process {holder.pid} on host {socket.gethostname()}' in again.stderr
  assert 'no longer running' in again.stderr
  assert (workdir / 'lock').read_text() == ''  # a clean exit empties it


@pytest.mark.stderr
@pytest.mark.slow
def test_a_failed_background_save_stops_the_run_with_one_line_and_deletes_nothing(
    demo, tmp_path):
  # Saves every 25 steps, keeping 1: the save of step 50 would delete step 25 once written.
  result = cli.run_main('enospc_from_step=50', *_flags(
      demo, tmp_path, num_train_steps=100, checkpoint_every_steps=25, keep_checkpoints=1,
      eval_every_steps=1000), module='tests.faulty_main')
  assert result.returncode == 1, result.stderr
  assert cli.problems(result.stderr) == [
      f'alexnet_jax: error: checkpoint of step 50 not written: No space left on device in '
      f'{tmp_path}/checkpoints; the newest good checkpoint is step 25.']
  assert _checkpoint_steps(tmp_path) == [25]
  # Stopped at a step boundary soon after the failure, not at the next save (75).
  assert 50 <= max(_losses(tmp_path)) < 75


@pytest.mark.stderr
@pytest.mark.slow
def test_a_disk_filled_by_another_process_stops_the_run_with_one_line_and_deletes_nothing(
    demo, tmp_path):
  # Full once checkpoint 4 is written. Which write finds it first depends on when that
  # checkpoint's background commit lands: a metrics line or TensorBoard event (then the
  # clean-up's own writes fail too), or the save of step 8. Either way: one line.
  result = cli.run_main('disk_full_after_step=4', *_flags(
      demo, tmp_path, num_train_steps=100, checkpoint_every_steps=4, keep_checkpoints=1,
      eval_every_steps=1000), module='tests.faulty_main')
  assert result.returncode == 1, result.stderr
  [line] = cli.problems(result.stderr)
  assert re.fullmatch(
      rf'alexnet_jax: error: (the run cannot write into {tmp_path}: No space left on device '
      rf'\({tmp_path}/\S+\); the newest good checkpoint is step 4\. Make room and run the same '
      rf'command to resume\.|checkpoint of step 8 not written: No space left on device in '
      rf'{tmp_path}/checkpoints; the newest good checkpoint is step 4\.)', line), line
  assert _checkpoint_steps(tmp_path) == [4]
  # Stopped at the first write after checkpoint 4 landed (its commit runs in the background;
  # the save of step 8 waits for it).
  assert 4 <= max(_losses(tmp_path)) <= 8


def test_the_cause_of_a_failed_save_is_found_in_tensorstore_s_message():
  from alexnet_jax import checkpoints  # pylint: disable=import-outside-toplevel
  error = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "opt_state.inner_state.2.trace.conv4.kernel/0.0.0.0.0" '
      'in OCDBT database at local file "/w/checkpoints/5.orbax-checkpoint-tmp/state.orbax-'
      'checkpoint-tmp/ocdbt.process_0/": Failed writing: "/w/checkpoints/5.orbax-checkpoint-tmp'
      '/state.orbax-checkpoint-tmp/ocdbt.process_0/d/04bf3adb84fd66bec3f47d2451e57556": Failed '
      "to write 1216512 bytes to file 12: No space left on device [os_error_code='28']")
  assert checkpoints.os_reason(error) == 'No space left on device'
  try:
    raise RuntimeError('the save failed') from error
  except RuntimeError as chained:
    assert checkpoints.os_reason(chained) == 'No space left on device'


@pytest.mark.stderr
@pytest.mark.slow
def test_training_in_a_read_only_workdir_stops_before_compiling(demo, tmp_path):
  workdir = tmp_path / 'read_only'
  workdir.mkdir()
  result, compiled = cli.run_main_recording_compiles(
      tmp_path / 'cache', f'erofs={workdir}', *_flags(demo, workdir), module='tests.faulty_main')
  assert result.returncode == 1 and not compiled, result.stderr
  assert cli.problems(result.stderr) == [
      f'alexnet_jax: error: --workdir={workdir} cannot be written (Read-only file system): the '
      'run writes its checkpoints, metrics or figures there. Choose a writable directory.']


@pytest.mark.stderr
@pytest.mark.slow
def test_eval_in_a_read_only_workdir_prints_its_result_then_says_it_was_not_written(
    demo, straight_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(straight_run, workdir)
  os.remove(f'{workdir}/eval/train_90_step{STEPS}.json')
  result = cli.run_main(f'erofs={workdir}', *_flags(demo, workdir, mode='eval'),
                        module='tests.faulty_main')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'train[90%:] at step {STEPS}: top-1 ')
  assert cli.problems(result.stderr) == [
      f'alexnet_jax: the result was not written into {workdir}/eval: Read-only file system.']
  assert not os.path.exists(f'{workdir}/eval/train_90_step{STEPS}.json')


@pytest.mark.stderr
@pytest.mark.slow
def test_a_torn_metrics_line_is_skipped_by_readers_and_dropped_on_resume(demo, straight_run,
                                                                         tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(straight_run, workdir)
  for step in _checkpoint_steps(workdir):
    if step > 6:
      shutil.rmtree(f'{workdir}/checkpoints/{step}')  # killed at step 7, in mid-line
  metrics_file = workdir / 'metrics.jsonl'
  with open(metrics_file, 'a') as f:
    f.write('{"epoch": 0.8, "learning_rate": 0.001, "lo')
  table = cli.run_main('--mode=visualize', '--results', f'--runs={workdir}',
                       f'--results_path={tmp_path}/R.md', f'--curves_path={tmp_path}/curves.png')
  assert table.returncode == 0, table.stderr
  [warning] = cli.problems(table.stderr)
  assert f'Skipped 1 line(s) of {metrics_file}' in warning
  resumed = cli.run_main(*_flags(demo, workdir))
  assert resumed.returncode == 0, resumed.stderr
  [warning] = cli.problems(resumed.stderr)
  assert f'{metrics_file} ended in a partial line' in warning
  records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
  assert {r['step'] for r in records if 'loss' in r} == set(range(1, STEPS + 1))
  assert _losses(workdir) == _losses(straight_run)


@pytest.mark.slow
@pytest.mark.stderr
def test_predict_on_a_directory_classifies_the_images_in_it_and_names_the_others(
    demo, straight_run, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  folder = tmp_path / 'photos'
  folder.mkdir()
  Image.new('RGB', (80, 60), (200, 30, 30)).save(folder / 'b.png')
  Image.new('RGB', (50, 70), (30, 30, 200)).save(folder / 'a.JPG', 'JPEG')
  (folder / 'notes.txt').write_text('not an image')
  (folder / 'x.jpg').write_text('text, named as an image')
  (folder / 'empty.jpg').write_bytes(b'')
  result = cli.run_main(*_flags(demo, straight_run, mode='predict', image=str(folder)))
  assert result.returncode == 0, result.stderr
  names = [line for line in result.stdout.splitlines() if line.startswith(str(folder))]
  assert names == [f'{folder}/a.JPG', f'{folder}/b.png']
  assert len([line for line in result.stdout.splitlines() if line.strip()[:2] == '1.']) == 2
  warnings = [line.split('] ', 1)[1] for line in cli.problems(result.stderr)]
  assert warnings == [f'Skipping {folder}/empty.jpg: it is empty (0 bytes).',
                      f'Skipping {folder}/x.jpg: it is not an image (JPEG, PNG, GIF, BMP).']


@pytest.mark.slow
@pytest.mark.stderr
def test_a_damaged_store_stops_training_in_one_line_whose_command_repairs_it(demo, tmp_path):
  data_dir = tmp_path / 'tfds'
  shutil.copytree(demo.data_dir, data_dir)
  cfg = config_lib.DataConfig(data_dir=str(data_dir), image_size=67, store='jpeg')
  shard = square_store.open_store(cfg).info.splits['train'].file_instructions[0].filename
  row = square_store.record_index(cfg)[os.path.basename(shard)][3]
  with open(shard, 'r+b') as f:  # 32 bytes inside record 3's image
    f.seek(int(row[square_store.IMAGE_OFFSET] + row[square_store.IMAGE_LENGTH] // 2))
    f.write(bytes(32))
  flags = _flags(demo, tmp_path / 'run', data_dir=data_dir, batch_size=10, num_train_steps=9,
                 eval_every_steps=9)  # one epoch of train[:90%]: every record is read
  result = cli.run_main(*flags)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  [line] = cli.problems(result.stderr)
  assert line.startswith(f'alexnet_jax: error: record 3 of {shard} is damaged'), line
  command = line.split('Prepare it again with: ')[1].split(' (or pass')[0]
  repaired = subprocess.run([sys.executable, *command.split()[1:]], cwd=cli.ROOT,
                            env=cli.environment(), capture_output=True, text=True, timeout=300)
  assert repaired.returncode == 0 and repaired.stdout.startswith('Prepared'), repaired.stderr
  again = cli.run_main(*flags)
  assert again.returncode == 0, again.stderr


def _loaded(process, library: str) -> bool:
  with open(f'/proc/{process.pid}/maps') as f:
    return library in f.read()


@pytest.mark.stderr
@pytest.mark.slow
@pytest.mark.parametrize('moment', ['imports', 'restore and compile'])
def test_ctrl_c_outside_training_is_one_line_and_status_130(demo, straight_run, moment):
  process = _start(_flags(demo, straight_run, mode='eval'))
  deadline = time.time() + 120
  if moment == 'imports':  # while jax loads, past the entry point's first line
    while not _loaded(process, 'jaxlib') and time.time() < deadline:
      time.sleep(0.01)
  else:  # the mode has begun: the checkpoint is read, the evaluation compiled
    while 'mode=eval' not in process.stderr.readline() and time.time() < deadline:
      pass
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 130, stderr
  assert stderr.splitlines()[-1] == 'alexnet_jax: stopped by Ctrl-C.', stderr
  assert cli.problems(stderr) == ['alexnet_jax: stopped by Ctrl-C.'], stderr
