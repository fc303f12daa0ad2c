"""launch.sh: what `slurm` and `tpu` submit or run, checked without a cluster."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests import cli

LAUNCH = os.path.join(cli.ROOT, 'launch.sh')
VENV = '/opt/venvs/alexnet'


def _launch(*args, env=None):
  return subprocess.run([LAUNCH, *args], capture_output=True, text=True, timeout=60,
                        env={**os.environ, 'ALEXNET_VENV': VENV, **(env or {})})


def test_help_lists_every_command():
  result = _launch('--help')
  assert result.returncode == 0
  commands = [line.split()[0] for line in result.stdout.splitlines()
              if line.startswith('  ') and not line.startswith('   ')]
  assert commands[:5] == ['setup', 'local', 'slurm', 'tpu', 'test']


def test_slurm_dry_run_prints_the_sbatch_script_and_command():
  result = _launch('slurm', 'experiments/paper.flags', '--nodes', '2', '--gpus-per-node', '8',
                   '--sbatch=--time=48:00:00', '--dry-run', '--batch_size=1024')
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      '#!/bin/bash',
      '#SBATCH --job-name=alexnet_jax-paper',
      '#SBATCH --nodes=2',
      '#SBATCH --ntasks-per-node=8',
      '#SBATCH --gpus-per-node=8',
      '#SBATCH --signal=TERM@300',
      f'#SBATCH --output={cli.ROOT}/slurm/%x-%j.out',
      '#SBATCH --time=48:00:00',
      'set -euo pipefail',
      f'cd {cli.ROOT}',
      f'srun --ntasks-per-node=8 --kill-on-bad-exit=1 {VENV}/bin/python -m alexnet_jax.main '
      '--flagfile=experiments/paper.flags --batch_size=1024',
      f'sbatch {cli.ROOT}/slurm/paper.sbatch',
  ]


def test_slurm_quotes_flags_and_the_dry_run_writes_nothing(tmp_path):
  flagfile = tmp_path / 'dry_run_only.flags'
  flagfile.write_text('--mode=train\n')
  result = _launch('slurm', str(flagfile), '--nodes=1', '--gpus-per-node=2', '--dry-run',
                   "--workdir=/scratch/Bob's runs/a b")
  assert result.returncode == 0, result.stderr
  srun = next(line for line in result.stdout.splitlines() if line.startswith('srun '))
  assert shlex.split(srun) == [
      'srun', '--ntasks-per-node=2', '--kill-on-bad-exit=1', f'{VENV}/bin/python', '-m',
      'alexnet_jax.main', f'--flagfile={flagfile}', "--workdir=/scratch/Bob's runs/a b"]
  assert not os.path.exists(f'{cli.ROOT}/slurm/dry_run_only.sbatch')


def _fake(tmp_path, name):
  """An executable `name` on PATH that appends its argv (and any script it gets) to a log."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  log = tmp_path / f'{name}.log'
  tool = bin_dir / name
  tool.write_text(f'#!{sys.executable}\nimport json, os, sys\n'
                  'script = open(sys.argv[-1]).read() if os.path.isfile(sys.argv[-1]) else None\n'
                  f'open({str(log)!r}, "a").write(json.dumps([sys.argv[1:], script]) + "\\n")\n')
  tool.chmod(0o755)
  return {'PATH': f'{bin_dir}:{os.environ["PATH"]}'}, log


def test_slurm_submits_the_script_it_prints(tmp_path):
  flagfile = tmp_path / 'submitted_by_test.flags'
  flagfile.write_text('--mode=train\n')
  args = ('slurm', str(flagfile), '--nodes', '4', '--gpus-per-node', '8', '--num_epochs=1')
  env, log = _fake(tmp_path, 'sbatch')
  created_dir = not os.path.isdir(f'{cli.ROOT}/slurm')
  script = f'{cli.ROOT}/slurm/submitted_by_test.sbatch'
  try:
    submitted = _launch(*args, env=dict(env, ALEXNET_VENV=sys.prefix))
    assert submitted.returncode == 0, submitted.stderr
    printed = _launch(*args, '--dry-run', env=dict(ALEXNET_VENV=sys.prefix)).stdout
    [(argv, text)] = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv == [script]
    assert printed == text + f'sbatch {script}\n'
  finally:
    if os.path.exists(script):
      os.remove(script)
    if created_dir:
      os.rmdir(f'{cli.ROOT}/slurm')


def test_tpu_dry_run_prints_one_command_for_every_worker():
  result = _launch('tpu', 'experiments/paper.flags', '--tpu', 'alexnet-v4-32', '--zone',
                   'us-central2-b', '--dry-run', '--batch_size=1024')
  assert result.returncode == 0, result.stderr
  assert result.stdout == (
      'gcloud compute tpus tpu-vm ssh alexnet-v4-32 --zone=us-central2-b --worker=all '
      "--command 'cd alexnet_jax && ./launch.sh local experiments/paper.flags "
      "--distributed=on --batch_size=1024'\n")


def test_tpu_runs_gcloud_with_a_command_that_survives_the_remote_shell(tmp_path):
  args = ('tpu', 'experiments/paper.flags', '--tpu=pod', '--zone=europe-west4-a',
          '--project=my-project', '--dir=/home/me/alexnet', '--workdir=gs://bucket/run 1')
  env, log = _fake(tmp_path, 'gcloud')
  result = _launch(*args, env=env)
  assert result.returncode == 0, result.stderr
  [(argv, _)] = [json.loads(line) for line in log.read_text().splitlines()]
  assert argv[:8] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'pod', '--zone=europe-west4-a',
                      '--project=my-project', '--worker=all']
  assert argv[8] == '--command'
  assert shlex.split(argv[9]) == ['cd', '/home/me/alexnet', '&&', './launch.sh', 'local',
                                  'experiments/paper.flags', '--distributed=on',
                                  '--workdir=gs://bucket/run 1']
  assert shlex.split(_launch(*args, '--dry-run').stdout) == ['gcloud', *argv]


def _stand_in_python(tmp_path, body: str) -> dict:
  """The environment of a launch.sh whose python is a bash script: it answers launch.sh's
  question for a free port, writes how it was started to tmp_path/coordinator (the
  coordination service, until SIGTERM) or tmp_path/ID (process ID), then runs `body`."""
  python = tmp_path / 'venv' / 'bin' / 'python'
  python.parent.mkdir(parents=True)
  python.write_text(f"""#!/bin/bash
[[ "$1" == -c ]] && exec {sys.executable} "$@"
if [[ "$2" == alexnet_jax.coordinator ]]; then
  printf '%s\\n' "JAX_PLATFORMS=$JAX_PLATFORMS" "$@" > {tmp_path}/coordinator
  trap 'exit 0' TERM
  while true; do sleep 0.05; done
fi
for arg in "$@"; do [[ "$arg" == --process_id=* ]] && id="${{arg#--process_id=}}"; done
printf '%s\\n' "JAX_PLATFORMS=$JAX_PLATFORMS" "$@" > {tmp_path}/$id
{body}
""")
  python.chmod(0o755)
  return {**os.environ, 'ALEXNET_VENV': str(tmp_path / 'venv')}


def _wait_for_files(tmp_path, names):
  deadline = time.time() + 30
  while not all((tmp_path / name).exists() for name in names) and time.time() < deadline:
    time.sleep(0.05)


@pytest.mark.stderr
def test_local_starts_processes_that_find_each_other_and_forwards_sigterm(tmp_path):
  """The stand-in processes exit 3 x their id on SIGTERM."""
  env = _stand_in_python(tmp_path, f"""
trap 'echo TERM >> {tmp_path}/$id; exit $((3 * id))' TERM
while true; do sleep 0.05; done""")
  launcher = subprocess.Popen(
      [LAUNCH, 'local', 'experiments/paper.flags', '--processes', '2', '--cpu_devices=2'],
      env=env, stderr=subprocess.PIPE, text=True)
  _wait_for_files(tmp_path, ('coordinator', '0', '1'))
  launcher.send_signal(signal.SIGTERM)
  _, stderr = launcher.communicate(timeout=30)
  started = [(tmp_path / str(i)).read_text().splitlines() for i in (0, 1)]
  port = started[0][5].rsplit(':', 1)[1]
  assert port.isdigit()
  assert (tmp_path / 'coordinator').read_text().splitlines() == [
      'JAX_PLATFORMS=cpu', '-m', 'alexnet_jax.coordinator', port, '2',
      '--flagfile=experiments/paper.flags', '--cpu_devices=2']
  for i, lines in enumerate(started):
    assert lines == ['JAX_PLATFORMS=cpu', '-m', 'alexnet_jax.main',
                     '--flagfile=experiments/paper.flags', '--cpu_devices=2',
                     f'--coordinator_address=localhost:{port}', '--num_processes=2',
                     f'--process_id={i}', '--coordination_service=separate', 'TERM']
  assert launcher.returncode == 3  # the first failure
  assert stderr.splitlines() == ['launch.sh: process 1 exited with status 3, the first process '
                                 'to stop']


@pytest.mark.stderr
def test_local_names_the_process_that_stopped_first_last_with_its_signal(tmp_path):
  """Stand-in process 1 is killed by SIGKILL; process 0 then exits with status 1, as a
  survivor does (a second later: launch.sh looks every 0.1 s)."""
  env = _stand_in_python(tmp_path, """
sleep 0.5
(( id == 1 )) && kill -KILL $$
sleep 1
exit 1""")
  result = subprocess.run([LAUNCH, 'local', 'experiments/paper.flags', '--processes', '2'],
                          env=env, capture_output=True, text=True, timeout=30)
  assert result.returncode == 128 + signal.SIGKILL
  assert result.stderr.splitlines() == [
      'launch.sh: process 0 exited with status 1',
      'launch.sh: process 1 was killed by SIGKILL, the first process to stop']


@pytest.mark.stderr
@pytest.mark.parametrize('args, message', [
    (('slurm', 'experiments/paper.flags', '--gpus-per-node', '8'), '--nodes'),
    (('slurm', 'experiments/paper.flags', '--nodes', '2'), '--gpus-per-node'),
    (('tpu', 'experiments/paper.flags', '--zone', 'z'), '--tpu'),
    (('tpu', 'experiments/paper.flags', '--tpu', 'x'), '--zone'),
    (('local', 'experiments/paper.flags', '--processes', '0'), '--processes'),
    (('slurm', 'experiments/missing.flags', '--nodes', '1', '--gpus-per-node', '1'), 'no flagfile'),
])
def test_missing_or_bad_arguments_are_refused(args, message):
  result = _launch(*args)
  assert result.returncode == 2
  assert message in result.stderr


@pytest.mark.parametrize('args, pytest_args', [
    ((), ['tests']),
    (('--fast',), ['tests', '-m', 'not slow']),
    (('-k', 'lrn'), ['tests', '-k', 'lrn']),
    (('tests/test_model.py',), ['tests/test_model.py']),
    (('--fast', 'tests/test_model.py::test_lrn_does_not_mix_towers', '-x'),
     ['-m', 'not slow', 'tests/test_model.py::test_lrn_does_not_mix_towers', '-x']),
])
def test_test_runs_the_suite_or_the_tests_its_arguments_name(tmp_path, args, pytest_args):
  """With a stand-in python that prints the arguments it gets."""
  python = tmp_path / 'venv' / 'bin' / 'python'
  python.parent.mkdir(parents=True)
  python.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
  python.chmod(0o755)
  result = subprocess.run([LAUNCH, 'test', *args], capture_output=True, text=True, timeout=60,
                          cwd=cli.ROOT, env={**os.environ, 'ALEXNET_VENV': str(tmp_path / 'venv')})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == ['-m', 'pytest', '-q', *pytest_args]
