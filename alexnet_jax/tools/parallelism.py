"""python -m alexnet_jax.tools.parallelism: the four strategies side by side, counted and modelled.

Counted: the training step of each strategy compiled for N = 2, 4, 8 CPU devices (forced on
this machine), read from XLA's program (strategy_costs.counted): the bytes each device sends
per step, by collective; the parameters and momentum it holds; its FLOPs. Each count is
checked against its formula (strategy_costs.formula, docs/PARALLELISM.md). In float32:
XLA's CPU compiler carries bfloat16 collectives in float32, so only float32 counts here are
what a GPU would send.

Modelled: from the same formulas, a stated model of a step on real hardware, up to 64
devices, at a fixed batch per device (weak scaling, as the 2014 paper ran):

  step = FLOPs per device / F + bytes sent per device / W

F: the FLOP/s a device sustains on this step, W: the bytes per second a device sends (and
receives) in a ring collective. Nothing overlaps (an upper bound on the time: XLA can hide
gradient reductions behind the backward pass), latency is left out (each collective adds
some 10 us per ring step), every device has the same link at every N (beyond one node a real
cluster falls back to its network), and unit counts need not divide over N. Scaling
efficiency = the step of one device (no communication) / the step on N. Defaults: an H100
in bfloat16 (parameters and gradients float32), F = 148 TFLOP/s: the 15% of its 989 TFLOP/s
dense bfloat16 peak that an H200 sustained on this step in the design notes (not measured
by this project); W = 300 GB/s over NVLink (2/3 of the 450 GB/s each way of NVLink 4, what
docs/SCALING.md assumes) or 40 GB/s over PCIe (2/3 of the 64 GB/s each way of PCIe 5.0
x16). It is a model: only its inputs' bytes and FLOPs are checked, on this machine.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from alexnet_jax import config as config_lib
from alexnet_jax.tools import command_line
from alexnet_jax.tools import strategy_costs
from alexnet_jax.tools import summary

COMMAND = 'python -m alexnet_jax.tools.parallelism'
STRATEGIES = config_lib.PARALLELISMS
COLORS = {'towers': '#c0392b', 'hybrid': '#8e44ad', 'data': '#2471a3', 'fsdp': '#229954'}
MARKERS = {'towers': 's', 'hybrid': 'D', 'data': 'o', 'fsdp': '.'}
MB = 1e6


@dataclasses.dataclass(frozen=True)
class Hardware:
  """What the model assumes of one device and its link."""
  name: str
  flops_per_second: float
  link_bytes_per_second: float


H100_FLOPS = 0.15 * 989e12
H100_NVLINK = Hardware('H100, NVLink', H100_FLOPS, 300e9)
H100_PCIE = Hardware('H100, PCIe', H100_FLOPS, 40e9)


@dataclasses.dataclass(frozen=True)
class Prediction:
  compute_seconds: float
  communication_seconds: float
  efficiency: float         # one device's step / this step (the same batch per device)

  @property
  def step_seconds(self) -> float:
    return self.compute_seconds + self.communication_seconds


def predict(config: config_lib.ModelConfig, devices: int, batch_per_device: int,
            hardware: Hardware) -> Prediction | None:
  """The model's step (module docstring); None where the strategy does not run as itself
  (the two towers on an odd number of devices, more than one)."""
  if config.parallelism == 'towers' and config.towers == 2 and devices % 2 and devices > 1:
    return None
  costs = strategy_costs.formula(config, devices, batch_per_device * devices)
  alone = strategy_costs.formula(config, 1, batch_per_device).flops
  compute = costs.flops / hardware.flops_per_second
  communication = costs.sent_bytes / hardware.link_bytes_per_second
  return Prediction(compute, communication,
                    alone / hardware.flops_per_second / (compute + communication))


def counted(config: config_lib.ModelConfig, devices: int, global_batch: int):
  """(counted, formula) costs of every strategy on `devices` of this machine's devices."""
  rows = []
  for strategy in STRATEGIES:
    strategy_config = dataclasses.replace(config, parallelism=strategy)
    mesh, program = strategy_costs.compile_step(strategy_config, devices, global_batch)
    rows.append((strategy_costs.counted(strategy_config, mesh, program),
                 strategy_costs.formula(strategy_config, devices, global_batch)))
  return rows


def _sent_text(sent: dict) -> str:
  short = {'all-reduce': 'AR', 'all-gather': 'AG', 'reduce-scatter': 'RS', 'all-to-all': 'A2A'}
  totals = {}
  for (kind, _), value in sent.items():
    totals[short[kind]] = totals.get(short[kind], 0) + value
  return ' + '.join(f'{name} {value / MB:,.1f}' for name, value in sorted(totals.items()))


def format_counts(rows, global_batch: int) -> str:
  """One table per device count: the counted costs, and whether they are their formulas."""
  header = ('N', 'strategy', 'mesh', 'MB sent / device / step', 'by collective (MB)',
            'params + momentum MB / device', 'GFLOP / device', 'formula')
  lines = []
  for got, want in rows:
    same = (got.sent == want.sent and got.state_bytes == want.state_bytes
            and got.flops == want.flops)
    lines.append([str(got.devices), got.parallelism, str(got.mesh), f'{got.sent_bytes / MB:,.1f}',
                  _sent_text(got.sent), f'{got.state_bytes / MB:,.1f}',
                  f'{got.flops / 1e9:,.1f}', 'equal' if same else 'DIFFERS'])
  return summary.text_table(header, lines)


def model_devices(max_devices: int) -> list[int]:
  return [2 ** k for k in range(max_devices.bit_length()) if 2 ** k <= max_devices]


def format_predictions(config, batch_per_device: int, hardware: list[Hardware],
                       max_devices: int) -> str:
  header = ['N'] + [f'{strategy}: {h.name}' for strategy in STRATEGIES for h in hardware]
  lines = []
  for devices in model_devices(max_devices):
    cells = [str(devices)]
    for strategy in STRATEGIES:
      for h in hardware:
        p = predict(dataclasses.replace(config, parallelism=strategy), devices,
                    batch_per_device, h)
        cells.append('-' if p is None else
                     f'{1000 * p.step_seconds:.1f} ms {100 * p.efficiency:.0f}%')
    lines.append(cells)
  return summary.text_table(header, lines)


def draw(config, batch_per_device: int, hardware: list[Hardware], max_devices: int,
         path: str) -> dict:
  """Writes the model's figure (PNG): per strategy against N, the bytes each device sends,
  the parameters and momentum it holds, the predicted step time and scaling efficiency (a
  line per link). Returns {(strategy, link name, N): Prediction}."""
  devices = model_devices(max_devices)
  figure, axes = plt.subplots(2, 2, figsize=(14, 10))
  (sent_axes, state_axes), (step_axes, efficiency_axes) = axes
  drawn = {}
  for strategy in STRATEGIES:
    strategy_config = dataclasses.replace(config, parallelism=strategy)
    # fsdp sends what data parallelism sends: a thinner line on top keeps both visible.
    style = dict(color=COLORS[strategy], marker=MARKERS[strategy],
                 linewidth=1.2 if strategy == 'fsdp' else 2.2)
    runs = [n for n in devices if predict(strategy_config, n, batch_per_device, hardware[0])]
    costs = [strategy_costs.formula(strategy_config, n, batch_per_device * n) for n in runs]
    sent_axes.plot([c.devices for c in costs if c.sent_bytes],
                   [c.sent_bytes / MB for c in costs if c.sent_bytes], label=strategy, **style)
    state_axes.plot(runs, [c.state_bytes / MB for c in costs], label=strategy, **style)
    for h, line in zip(hardware, ('-', '--')):
      points = [(n, predict(strategy_config, n, batch_per_device, h)) for n in runs]
      drawn.update({(strategy, h.name, n): p for n, p in points})
      label = f'{strategy}, {h.name.split(", ")[-1]}'
      step_axes.plot(runs, [1000 * p.step_seconds for _, p in points], line, label=label,
                     **style)
      efficiency_axes.plot(runs, [100 * p.efficiency for _, p in points], line, label=label,
                           **style)
  titles = ((sent_axes, 'MB each device sends per step'),
            (state_axes, 'MB of parameters + momentum per device'),
            (step_axes, 'predicted step time (ms)'),
            (efficiency_axes, 'predicted scaling efficiency (%)'))
  for ax, title in titles:
    ax.set_xscale('log', base=2)
    ax.set_xticks(devices, [str(n) for n in devices])
    ax.set_xlabel('devices')
    ax.set_title(title)
    ax.grid(alpha=0.3)
  sent_axes.set_yscale('log')
  state_axes.set_yscale('log')
  efficiency_axes.set_ylim(0, 105)
  sent_axes.legend(fontsize=9)
  efficiency_axes.legend(fontsize=8, ncol=2)
  links = ', '.join(f'{h.name.split(", ")[-1]} {h.link_bytes_per_second / 1e9:g} GB/s'
                    for h in hardware)
  figure.suptitle(
      f'AlexNet ({config.towers} towers, {config.image_size}x{config.image_size}, '
      f'{config.dtype}), {batch_per_device} images per device, from the formulas of '
      'docs/PARALLELISM.md.\nStep time and efficiency are a model, not a measurement: step = '
      f'FLOPs / {hardware[0].flops_per_second / 1e12:g} TFLOP/s + bytes / link ({links}); '
      'no overlap, no latency.', fontsize=11)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=90, bbox_inches='tight', metadata={'Software': None})
  plt.close(figure)
  return drawn


# ----------------------------------------------------------------------------------
# Command line.


@dataclasses.dataclass(frozen=True)
class Options(command_line.NetOptions):
  """The command's flags: the net's (NetOptions), then the counts and the model's inputs."""
  devices: str = '2,4,8'              # counted on this many forced CPU devices
  batch_per_device: int = 128         # the 2014 paper's batch per GPU
  model_dtype: str = 'bfloat16'       # the model's compute dtype (the counts are float32)
  flops_per_second: float = H100_FLOPS
  nvlink: float = H100_NVLINK.link_bytes_per_second
  pcie: float = H100_PCIE.link_bytes_per_second
  max_devices: int = 64
  figure: str = 'docs/parallelism.png'

  def device_counts(self) -> list[int]:
    try:
      counts = [int(n) for n in self.devices.split(',')]
    except ValueError:
      counts = []
    if not counts or min(counts) < 1:
      raise config_lib.UserError(f'--devices must be device counts like 2,4,8, got '
                                 f'{self.devices!r}.')
    return counts

  def hardware(self) -> list[Hardware]:
    if min(self.flops_per_second, self.nvlink, self.pcie) <= 0 or self.batch_per_device < 1:
      raise config_lib.UserError('--flops_per_second, --nvlink, --pcie and --batch_per_device '
                                 'must be positive.')
    return [Hardware(H100_NVLINK.name, self.flops_per_second, self.nvlink),
            Hardware(H100_PCIE.name, self.flops_per_second, self.pcie)]


def main(argv=None) -> None:
  options = command_line.parse(Options, COMMAND, __doc__.splitlines()[0], argv)
  try:
    config = options.model_config()
    counts, hardware = options.device_counts(), options.hardware()
    _one_of_dtypes(options.model_dtype)
    # Forced CPU devices, as many as the largest count, on any machine.
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', max(counts))
    for devices in counts:  # every split must divide before anything compiles
      for strategy in STRATEGIES:
        strategy_costs.check_divides(dataclasses.replace(config, parallelism=strategy), devices,
                                     options.batch_per_device * devices)
  except config_lib.UserError as error:
    print(f'{COMMAND}: error: {error}', file=sys.stderr)
    sys.exit(2)
  print(f'AlexNet, {config.towers} towers, {config.image_size}x{config.image_size}, width '
        f'x{config.width:g}, {config.num_classes} classes, float32, '
        f'{options.batch_per_device} images per device: the compiled training step of each '
        f'strategy on forced CPU devices (checked against docs/PARALLELISM.md\'s formulas)\n')
  for devices in counts:
    batch = options.batch_per_device * devices
    print(format_counts(counted(config, devices, batch), batch), '\n', flush=True)
  model_config = dataclasses.replace(config, dtype=options.model_dtype)
  print(f'Model (not a measurement; docs/PARALLELISM.md): step = FLOPs / '
        f'{options.flops_per_second / 1e12:g} TFLOP/s + bytes / link, {options.model_dtype} '
        f'activations, float32 gradients; ms per step and scaling efficiency:\n')
  print(format_predictions(model_config, options.batch_per_device, hardware,
                           options.max_devices))
  draw(model_config, options.batch_per_device, hardware, options.max_devices, options.figure)
  print(f'\nWrote {options.figure}')


def _one_of_dtypes(dtype: str) -> None:
  if dtype not in config_lib.DTYPES:
    raise config_lib.UserError(f'--model_dtype must be one of {", ".join(config_lib.DTYPES)}, '
                               f'got {dtype!r}.')


if __name__ == '__main__':
  main()
