"""Runs the real entry point in a subprocess, as a user would."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args: str, cpu_devices: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
  return run_module('alexnet_jax.main', *args, cpu_devices=cpu_devices, timeout=timeout)


def run_module(module: str, *args: str, cpu_devices: int = 1, timeout: float = 300,
               cwd: str = ROOT) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={cpu_devices} '
                       '--xla_backend_optimization_level=0')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)
