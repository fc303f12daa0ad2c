"""The coordination service of `launch.sh local --processes N`, in a process of its own.

    python -m alexnet_jax.coordinator PORT N --flagfile=FLAGFILE [flags...]

launch.sh runs it beside the N processes (started with --coordination_service=separate)
and stops it once they have all exited; see distributed.py for why it is not in process
0. It reads --heartbeat_timeout from the run's flags; flags that do not parse are the
processes' to report (each does, at once), so it then serves with the default.
"""

from __future__ import annotations

import sys

from absl import flags

from alexnet_jax import config
from alexnet_jax import distributed
from alexnet_jax import flags as flag_definitions


def heartbeat_timeout(argv: list[str]) -> int:
  values = flag_definitions.define(flags.FlagValues())
  try:
    values(argv)
  except flags.Error:
    return config.ProcessConfig.heartbeat_timeout
  return values['heartbeat_timeout'].value


if __name__ == '__main__':
  port, processes = int(sys.argv[1]), int(sys.argv[2])
  distributed.serve(port, processes, heartbeat_timeout([sys.argv[0], *sys.argv[3:]]))
