"""Runs the real entry point in a subprocess, as a user would."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment(cpu_devices: int = 1, **extra: str | None) -> dict:
  """The subprocess environment; an extra variable set to None is removed."""
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={cpu_devices} '
                       '--xla_backend_optimization_level=0')
  env.update(extra)
  return {name: value for name, value in env.items() if value is not None}


def run_main(*args: str, cpu_devices: int = 1, timeout: float = 300, env: dict | None = None,
             module: str = 'alexnet_jax.main', cwd: str = ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd,
                        env=environment(cpu_devices, **(env or {})),
                        capture_output=True, text=True, timeout=timeout)


def run_main_recording_compiles(cache_dir, *args: str, **kwargs):
  """run_main with JAX's persistent cache catching every program compiled.

  Returns (the completed process, the names of the compiled programs): none means the
  run ended before anything was compiled.
  """
  os.makedirs(cache_dir, exist_ok=True)
  env = {'JAX_COMPILATION_CACHE_DIR': str(cache_dir),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
         'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0', **kwargs.pop('env', {})}
  result = run_main(*args, env=env, **kwargs)
  return result, sorted(os.listdir(cache_dir))


def problems(stderr: str) -> list[str]:
  """The lines of stderr other than absl INFO lines (I1202 12:00:00.000 ...)."""
  return [line for line in stderr.splitlines()
          if line.strip() and not re.match(r'I\d{4} \d\d:\d\d:\d\d', line)]
