"""Several processes as one JAX program, on this machine (launch.sh local --processes 2).

Two processes with two CPU devices each form one (data=2, tower=2) mesh: each process
holds one tower pair, and every step's gradient sum over 'data' crosses processes (gloo).

Each process reads its own part of the training split, so one process and two see the
same batches only when a batch is the whole split: here 16 examples, batch 16, centre
crops, no PCA noise and no dropout (whose masks follow an example's position in the
batch). Every step then sums the same 16 losses, in another order.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import distributed
from alexnet_jax import metrics
from alexnet_jax import preprocess
from tests import cli
from tests import meshes
from tests import reference
from tests import stream
from tests import training

TINY = dict(mode='train', image_size=67, width=0.125, init='he', num_classes=1000,
            batch_size=16, learning_rate=0.001, schedule='constant', train_split='train[:16]',
            eval_split='train[90%:]', shuffle_buffer=32, augment='none', pca_std=0,
            dropout_rate=0, eval_every_steps=2, checkpoint_every_steps=1000,
            log_every_steps=1, store='none')  # the host's crops: what the reference reads
TWO_BY_TWO = ('--cpu_devices=2', '--mesh=data:2,tower:2')


def _flagfile(demo, path):
  flags = dict(TINY, data_dir=demo.data_dir, manual_dir=demo.manual_dir)
  path.write_text(''.join(f'--{name}={value}\n' for name, value in flags.items()))
  return str(path)


def _launch(flagfile, *args):
  """./launch.sh local FLAGFILE --processes 2 ARGS, in the background."""
  env = dict(os.environ, ALEXNET_VENV=sys.prefix,
             XLA_FLAGS='--xla_backend_optimization_level=0')
  return subprocess.Popen([os.path.join(cli.ROOT, 'launch.sh'), 'local', flagfile,
                           '--processes', '2', *args],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _processes(launcher_pid):
  """{process id: pid} of the processes the launcher started."""
  found = {}
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/stat') as f:
        parent = int(f.read().rsplit(')', 1)[1].split()[1])
      with open(f'/proc/{pid}/cmdline') as f:
        args = f.read().split('\0')
    except OSError:
      continue  # exited meanwhile
    ids = [a.split('=', 1)[1] for a in args if a.startswith('--process_id=')]
    if parent == launcher_pid and ids:
      found[int(ids[0])] = int(pid)
  assert sorted(found) == [0, 1], found
  return found


def _records(workdir):
  path = f'{workdir}/metrics.jsonl'
  try:
    return metrics.read_metrics(path) if os.path.exists(path) else []
  except ValueError:
    return []  # a line being written


def _wait_until(done, launcher, timeout=240):
  """Polls done() while every process runs."""
  deadline = time.time() + timeout
  while not done():
    assert launcher.poll() is None, launcher.communicate()
    assert time.time() < deadline, 'timed out'
    time.sleep(0.05)


def _stops(stderr):
  return [int(step) for step in re.findall(r'Stopped at step (\d+) after SIGTERM', stderr)]


def _losses(workdir):
  return {r['step']: r['loss'] for r in _records(workdir) if 'loss' in r}


def _evals(workdir):
  return {r['step']: r for r in _records(workdir) if 'top1' in r}


def _reference_run(demo, steps):
  """The paper's SGD on the grouped reference net, every batch the whole split.

  Returns ({step: loss}, the eval split's (top-1, top-5, loss) after the last step).
  """
  cfg = config_lib.DataConfig(data_dir=demo.data_dir, train_split=TINY['train_split'],
                               eval_split=TINY['eval_split'], image_size=TINY['image_size'],
                               **stream.KNOWN_ORDER)
  images, labels = stream.train_batch(cfg, 0, TINY['batch_size'])  # in any order: the mean
  inputs = images.astype(np.float32) - preprocess.CHANNEL_MEAN
  losses, params = reference.paper_sgd(meshes.host_params(training.MODEL),
                                       [(inputs, labels)] * steps,
                                       learning_rate=TINY['learning_rate'])
  crops, labels = stream.eval_examples(cfg)
  return (dict(enumerate(losses, start=1)),
          reference.scores(params, crops[:, 0] - preprocess.CHANNEL_MEAN, labels))


@pytest.fixture(scope='module')
def preempted(demo, tmp_path_factory):
  """Two processes train until process 1 alone gets a SIGTERM: (workdir, stderr, status)."""
  workdir = tmp_path_factory.mktemp('two_processes')
  flagfile = _flagfile(demo, workdir / 'tiny.flags')
  launcher = _launch(flagfile, *TWO_BY_TWO, f'--workdir={workdir}', '--num_train_steps=1000')
  _wait_until(lambda: any(r['step'] >= 3 for r in _records(workdir)), launcher)
  os.kill(_processes(launcher.pid)[1], signal.SIGTERM)
  _, stderr = launcher.communicate(timeout=120)
  return workdir, stderr, launcher.returncode


@pytest.fixture(scope='module')
def stop_step(preempted):
  _, stderr, returncode = preempted
  assert returncode == 0, stderr
  stops = _stops(stderr)
  assert len(stops) == 2, stderr  # one line from each process
  return stops[0]


@pytest.fixture(scope='module')
def one_process(demo, preempted, stop_step, tmp_path_factory):
  """The same training, as far as the two processes went, in one process with 4 devices."""
  workdir = tmp_path_factory.mktemp('one_process')
  result = cli.run_main(f'--flagfile={preempted[0]}/tiny.flags', f'--workdir={workdir}',
                        '--mesh=data:2,tower:2', f'--num_train_steps={stop_step}',
                        cpu_devices=4)
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.mark.stderr
@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_saves_it(preempted, stop_step):
  workdir, stderr, _ = preempted
  assert _stops(stderr) == [stop_step, stop_step]
  assert stop_step >= 3
  assert max(_losses(workdir)) == stop_step  # no step after the agreed one
  saved = sorted(int(d) for d in os.listdir(f'{workdir}/checkpoints') if d.isdigit())
  assert saved[-1] == stop_step
  assert not [d for d in os.listdir(f'{workdir}/checkpoints') if 'tmp' in d]  # complete


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one_process_with_four_devices(
    demo, preempted, stop_step, one_process):
  two, one = _losses(preempted[0]), _losses(one_process)
  assert sorted(two) == sorted(one) == list(range(1, stop_step + 1))
  for step in one:
    assert two[step] == pytest.approx(one[step], rel=1e-5), step
  losses, (top1, top5, eval_loss) = _reference_run(demo, 2)  # what both should compute
  for step, loss in losses.items():
    assert one[step] == pytest.approx(loss, rel=1e-4), step
  evals_two, evals_one = _evals(preempted[0]), _evals(one_process)
  assert 2 in evals_two
  for step in set(evals_two) & set(evals_one):
    assert (evals_two[step]['top1'], evals_two[step]['top5']) == (
        evals_one[step]['top1'], evals_one[step]['top5'])
    assert evals_two[step]['eval_loss'] == pytest.approx(evals_one[step]['eval_loss'], rel=1e-5)
  assert (evals_one[2]['top1'], evals_one[2]['top5']) == pytest.approx((top1, top5), abs=1e-9)
  assert evals_one[2]['eval_loss'] == pytest.approx(eval_loss, rel=1e-4)


@pytest.mark.slow
def test_their_checkpoint_restores_in_one_process_and_evaluates_the_same(
    preempted, stop_step, one_process):
  workdir = preempted[0]
  written = f'{workdir}/eval/train_90_step{stop_step}.json'
  if os.path.exists(written):
    os.remove(written)  # the two processes' own evaluation of that step
  result = cli.run_main(f'--flagfile={workdir}/tiny.flags', f'--workdir={workdir}',
                        '--mode=eval', cpu_devices=1)
  assert result.returncode == 0, result.stderr
  assert f'at step {stop_step}' in result.stdout
  restored = json.load(open(written))
  expected = _evals(one_process)[stop_step]
  assert (restored['top1'], restored['top5']) == (expected['top1'], expected['top5'])
  assert restored['loss'] == pytest.approx(expected['eval_loss'], rel=1e-5)


HEARTBEAT = 5           # --heartbeat_timeout of the tests that lose a process
LOST_WITHIN = HEARTBEAT + 5  # docs/SCALING.md: every survivor has exited by then


@pytest.mark.stderr
@pytest.mark.slow
@pytest.mark.parametrize('killed', [0, 1])
def test_a_lost_process_ends_the_other_with_one_line_and_the_same_command_resumes(
    demo, tmp_path, killed):
  flagfile = _flagfile(demo, tmp_path / 'tiny.flags')
  workdir = tmp_path / 'run'
  run = (*TWO_BY_TWO, f'--workdir={workdir}', f'--heartbeat_timeout={HEARTBEAT}',
         '--checkpoint_every_steps=2')
  launcher = _launch(flagfile, *run, '--num_train_steps=1000')
  # In mid-training, once checkpoint 4 is complete: the survivor is in a step's collectives.
  _wait_until(lambda: (workdir / 'checkpoints' / '4').is_dir(), launcher)
  os.kill(_processes(launcher.pid)[killed], signal.SIGKILL)
  start = time.time()
  _, stderr = launcher.communicate(timeout=60)  # returns when every process has exited
  assert time.time() - start < LOST_WITHIN, stderr
  newest = max(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())
  assert newest >= 4
  survivor = 1 - killed
  assert launcher.returncode == 128 + signal.SIGKILL, stderr
  assert cli.problems(stderr) == [
      f'alexnet_jax: error: process {killed} was lost: no heartbeat for {HEARTBEAT} s (killed, '
      f'crashed, or its host is down). The newest good checkpoint is step {newest} in '
      f'{workdir}/checkpoints: run the same command to resume from it.',
      f'launch.sh: process {survivor} exited with status 1',
      f'launch.sh: process {killed} was killed by SIGKILL, the first process to stop']
  again = _launch(flagfile, *run, f'--num_train_steps={newest + 1}')
  _, stderr = again.communicate(timeout=240)
  assert again.returncode == 0, stderr
  assert stderr.count(f'Restored step {newest} ') == 2  # by each process
  assert f'step {newest + 1}/{newest + 1} ' in stderr  # trained on to the end


@pytest.mark.parametrize('config, environ, starts', [
    (config_lib.ProcessConfig(), {}, False),
    (config_lib.ProcessConfig(coordinator_address='localhost:1234', num_processes=2,
                               process_id=1), {}, True),
    (config_lib.ProcessConfig(distributed='on'), {}, True),
    (config_lib.ProcessConfig(distributed='off'), {'SLURM_NTASKS': '8'}, False),
])
def test_when_jax_distributed_starts(config, environ, starts):
  assert distributed.should_start(config, environ) == starts


@pytest.mark.parametrize('tasks, starts', [('1', False), ('16', True)])
def test_a_slurm_job_step_of_several_tasks_starts_jax_distributed(tasks, starts):
  step = dict(SLURM_JOB_ID='42', SLURM_STEP_NODELIST='gpu[01-02]', SLURM_NTASKS=tasks,
              SLURM_PROCID='0', SLURM_LOCALID='0')
  assert distributed.should_start(config_lib.ProcessConfig(), step) == starts
  # Outside a job step (no SLURM_STEP_NODELIST) nothing starts.
  without_step = {k: v for k, v in step.items() if k != 'SLURM_STEP_NODELIST'}
  assert not distributed.should_start(config_lib.ProcessConfig(), without_step)


@pytest.mark.parametrize('fields, message', [
    (dict(num_processes=2), 'go together'),
    (dict(coordinator_address='localhost:1', num_processes=2, process_id=2), 'process_id'),
    (dict(coordinator_address='localhost', num_processes=2, process_id=0), 'host:port'),
    (dict(distributed='off', coordinator_address='h:1', num_processes=2, process_id=0),
     'contradicts'),
    (dict(heartbeat_timeout=0), 'at least 1'),
    (dict(coordination_service='separate'), 'launch.sh local sets them'),
])
def test_process_flags_that_cannot_start_are_refused(fields, message):
  with pytest.raises(config_lib.UserError, match=message):
    config_lib.ProcessConfig(**fields).validate()


@pytest.mark.slow
def test_a_tower_pair_split_over_two_processes_reads_one_part_of_the_data(demo, tmp_path):
  # The 2012 layout with one process per GPU: device (0, t) of a (1, 2) mesh is process t.
  # Both processes must read the same examples; the run equals one process, two devices.
  flagfile = _flagfile(demo, tmp_path / 'tiny.flags')
  launcher = _launch(flagfile, '--cpu_devices=1', '--mesh=data:1,tower:2',
                     f'--workdir={tmp_path}/pair', '--num_train_steps=2', '--eval_every_steps=2')
  _, stderr = launcher.communicate(timeout=240)
  assert launcher.returncode == 0, stderr
  single = cli.run_main(f'--flagfile={flagfile}', f'--workdir={tmp_path}/single',
                        '--mesh=data:1,tower:2', '--num_train_steps=2', '--eval_every_steps=2',
                        cpu_devices=2)
  assert single.returncode == 0, single.stderr
  assert _losses(f'{tmp_path}/pair') == _losses(f'{tmp_path}/single')
  assert _losses(f'{tmp_path}/single') == pytest.approx(_reference_run(demo, 2)[0], rel=1e-4)
  pair, alone = _evals(f'{tmp_path}/pair')[2], _evals(f'{tmp_path}/single')[2]
  assert (pair['top1'], pair['top5']) == (alone['top1'], alone['top5'])


class _Device:
  def __init__(self, process_index):
    self.process_index = process_index


class _Mesh:
  def __init__(self, processes):
    import numpy as np  # pylint: disable=import-outside-toplevel
    self.devices = np.array([[_Device(p) for p in row] for row in processes], dtype=object)


@pytest.mark.parametrize('processes, readers', [
    ([[0, 0], [1, 1]], {0: (0, 2), 1: (1, 2)}),   # a tower pair per process
    ([[0, 1], [2, 3]], {0: (0, 2), 1: (0, 2), 2: (1, 2), 3: (1, 2)}),  # a tower per process
    ([[0, 1]], {0: (0, 1), 1: (0, 1)}),           # the 2012 layout: two processes, one pair
])
def test_processes_holding_the_same_data_rows_read_the_same_part(processes, readers,
                                                                 monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  for process, expected in readers.items():
    monkeypatch.setattr(jax, 'process_index', lambda process=process: process)
    assert input_pipeline.data_readers(_Mesh(processes)) == expected
