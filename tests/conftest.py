"""Test setup: 8 forced CPU devices so meshes up to (4, 2) run on any machine.

LLVM optimization is turned down: the tests run tiny models, where XLA's compile time
(threefry random numbers compile slowly on the CPU) dwarfs the run time.
"""

import os

# Must be set before jax initializes its backends.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0').strip()

# The demo ImageNet fixture (`demo`), prepared once per session for every module.
pytest_plugins = ['tests.conftest_data']
