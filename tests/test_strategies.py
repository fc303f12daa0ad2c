"""The four parallelism strategies: the same math as one device, the bytes their formulas say,
the default as it was, and bad combinations refused before anything compiles."""

import dataclasses
import functools
import json

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import preflight
from alexnet_jax import strategies
from alexnet_jax.tools import strategy_costs
from alexnet_jax.tools import summary
from tests import default_run
from tests import meshes

# Every split axis of this net divides over 8 devices: conv1 has 24 channels per tower,
# fc6 and fc7 1,024 units, fc8 16 classes.
EVEN = dataclasses.replace(meshes.TINY, width=0.5, num_classes=16)
ONE_TOWER = dataclasses.replace(EVEN, towers=1)
CAFFE = dataclasses.replace(meshes.CAFFE, width=0.5, num_classes=16)
STRATEGIES = config_lib.PARALLELISMS


def _config(base, strategy):
  return dataclasses.replace(base, parallelism=strategy)


@functools.cache
def _loss_and_grad(config, devices):
  """(logits, gradients) of the training-mode loss (dropout on) on `devices` devices."""
  mesh = parallel.make_mesh(strategy_costs.mesh_shape(config, devices), jax.devices()[:devices])
  forward = parallel.sharded_forward(config, mesh)

  def loss(params, images, labels, rng):
    logits = forward(params, images, rng, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  params, images, labels = meshes.place(mesh, config, meshes.host_params(config),
                                        *meshes.batch(config, scale=60.0 if config.lrn_variant
                                                      == 'caffe' else 1.0))
  with jax.set_mesh(mesh):
    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params, images, labels, jax.random.key(3))
  return np.asarray(logits), jax.device_get(grads), grads


def _assert_same_math(config, devices):
  want_logits, want_grads, _ = _loss_and_grad(_config(config, 'towers'), 1)
  logits, grads, placed = _loss_and_grad(config, devices)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(
      g, w, rtol=1e-4, atol=max(1e-6, 1e-6 * np.abs(w).max())), grads, want_grads)
  return placed


@pytest.mark.parametrize('devices', [2, 4, pytest.param(8, marks=pytest.mark.slow)])
@pytest.mark.parametrize('strategy', STRATEGIES)
def test_every_strategy_computes_the_single_device_logits_and_gradients(strategy, devices):
  # Dropout included: its masks are keyed by tower, layer and global example (and drawn
  # for all of a layer's units where the hybrid splits them), never by device.
  placed = _assert_same_math(_config(EVEN, strategy), devices)
  # The gradients come back in the parameters' layout: fsdp's and the hybrid's split.
  spec = {'towers': P_TOWER, 'hybrid': P_UNITS, 'data': P_WHOLE, 'fsdp': P_UNITS}[strategy]
  split = tuple(placed['fc7']['kernel'].sharding.spec)
  assert split + (None,) * (3 - len(split)) == spec


P_TOWER = ('tower', None, None)
P_UNITS = (None, None, 'data')
P_WHOLE = (None, None, None)


@pytest.mark.parametrize('strategy', ['hybrid', 'fsdp', 'data'])
def test_caffes_net_and_the_one_tower_net_under_every_strategy(strategy):
  # Caffe's LRN reads the other tower's edge channels: with every tower on every device the
  # halo is a concatenation. The hybrid also runs the one-tower net.
  _assert_same_math(_config(CAFFE, strategy), 2)
  if strategy == 'hybrid':
    _assert_same_math(_config(ONE_TOWER, strategy), 2)


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_every_strategy_returns_the_features_of_both_towers(strategy):
  config = _config(meshes.TINY, strategy)
  params, images = meshes.host_params(), meshes.batch()[0]
  _, state = model_lib.AlexNet(meshes.TINY).apply({'params': params}, images,
                                                  mutable=['intermediates'])
  want = np.concatenate(state['intermediates']['fc7_output'][0], axis=-1)
  mesh = parallel.make_mesh(strategy_costs.mesh_shape(config, 2), jax.devices()[:2])
  placed, images, _ = meshes.place(mesh, config, params, images, np.zeros(8, np.int32))
  with jax.set_mesh(mesh):
    _, features = jax.jit(parallel.sharded_forward(config, mesh, features='fc7'))(placed, images)
  np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------
# Bytes, state and FLOPs: the formulas of docs/PARALLELISM.md against the compiled step.


@functools.cache
def _compiled(config, devices):
  return strategy_costs.compile_step(config, devices, meshes.BATCH)


@pytest.mark.parametrize('devices', [2, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.parametrize('strategy', STRATEGIES)
def test_the_formulas_are_what_the_compiled_step_does(strategy, devices):
  config = _config(EVEN, strategy)
  want = strategy_costs.formula(config, devices, meshes.BATCH)
  got = strategy_costs.counted(config, *_compiled(config, devices))
  assert got.mesh == want.mesh
  assert got.sent == pytest.approx(want.sent, rel=1e-12)  # by collective and pass
  assert got.state_bytes == want.state_bytes
  assert got.flops == want.flops


def test_the_towers_formula_counts_caffes_lrn_halos():
  config = _config(CAFFE, 'towers')
  got = strategy_costs.counted(config, *_compiled(config, 2))
  assert got.sent == pytest.approx(strategy_costs.formula(config, 2, meshes.BATCH).sent)


def test_fsdp_holds_a_1_over_n_share_and_sends_what_data_parallelism_sends():
  # From the compiled steps of the test above: parameters and momentum per device fall as
  # 1/N (all but fc8's 16 biases), and gathering parameters then scattering their gradients
  # moves the bytes of one all-reduce of the gradients.
  data = strategy_costs.counted(_config(EVEN, 'data'), *_compiled(_config(EVEN, 'data'), 2))
  fsdp = strategy_costs.counted(_config(EVEN, 'fsdp'), *_compiled(_config(EVEN, 'fsdp'), 2))
  biases = 2 * 4 * EVEN.num_classes
  assert fsdp.state_bytes == (data.state_bytes - biases) / 2 + biases
  assert fsdp.sent_bytes == data.sent_bytes
  for n in (4, 8, 64):
    ratio = (strategy_costs.formula(_config(EVEN, 'fsdp'), n, 64).state_bytes /
             strategy_costs.formula(_config(EVEN, 'data'), n, 64).state_bytes)
    assert ratio == pytest.approx(1 / n, rel=1e-3)


def test_summary_lists_the_hybrids_collectives_per_layer():
  config = _config(EVEN, 'hybrid')
  mesh, program = _compiled(config, 2)
  from alexnet_jax.tools import communication  # pylint: disable=import-outside-toplevel
  rows = summary.communication_rows(communication.collectives(program.as_text(), mesh),
                                    meshes.BATCH // 2)
  got = {(direction, layer, kind) for direction, axis, layer, kind, *_ in rows}
  assert got == {('forward', 'fc6', 'all-gather'), ('forward', 'fc7', 'all-gather'),
                 ('forward', 'fc8', 'all-gather'), ('forward', 'fc8', 'all-to-all'),
                 ('backward', 'fc6', 'reduce-scatter'), ('backward', 'fc7', 'reduce-scatter'),
                 ('backward', 'fc8', 'reduce-scatter'), ('backward', 'fc8', 'all-to-all'),
                 ('backward', 'several', 'all-reduce')}


def test_preflight_counts_the_parameters_each_strategy_leaves_on_a_device():
  for strategy in STRATEGIES:
    config = _config(EVEN, strategy)
    mesh = parallel.make_mesh(strategy_costs.mesh_shape(config, 4), jax.devices()[:4])
    needed = preflight.footprint(config, config_lib.OptimizerConfig(), mesh, 8, training=True)
    assert needed.parameters == strategy_costs.formula(config, 4, 8).state_bytes / 2, strategy


# ----------------------------------------------------------------------------------
# The default as it was.


def test_the_default_is_the_recorded_run_of_the_code_before_strategies():
  with open(default_run.RECORD) as f:
    recorded = json.load(f)
  same_machine = recorded['jax'] == jax.__version__ and recorded['cpu'] == default_run.cpu()
  for mesh, want in recorded['runs'].items():
    got = default_run.run(tuple(map(int, mesh.split(','))))
    if recorded['jax'] == jax.__version__:  # the program's text is the jax version's
      assert got['program_sha256'] == want['program_sha256'], mesh
    if same_machine:  # the same program on the same CPU: the same bits
      assert got['losses'] == want['losses'] and got['params_sha256'] == want['params_sha256']
    else:
      assert [float.fromhex(x) for x in got['losses']] == pytest.approx(
          [float.fromhex(x) for x in want['losses']], rel=1e-5), mesh


# ----------------------------------------------------------------------------------
# Bad combinations: one line, from the config or the rules, before anything compiles.


@pytest.mark.parametrize('strategy', ['hybrid', 'data', 'fsdp'])
def test_a_strategy_that_runs_every_tower_everywhere_takes_no_tower_axis(strategy):
  mesh = config_lib.MeshConfig(mesh='data:2,tower:2')
  with pytest.raises(config_lib.UserError, match=f'--parallelism={strategy} runs every tower on '
                     'every device: it takes no tower axis; use --mesh=data:4,tower:1'):
    mesh.shape(4, towers=2, parallelism=strategy)
  assert config_lib.MeshConfig().shape(4, 2, strategy) == config_lib.MeshShape(4, 1)
  assert config_lib.MeshConfig().shape(4, 2, 'towers') == config_lib.MeshShape(2, 2)


@pytest.mark.parametrize('strategy, config, devices, message', [
    ('fsdp', meshes.TINY, 4, "conv1's 6 output channels per tower over 4 devices"),
    ('hybrid', EVEN, 8, None),
    ('hybrid', meshes.TINY, 4, "fc8's 10 classes over 4 devices"),
    ('hybrid', dataclasses.replace(EVEN, width=0.51), 8, "fc6's 1044 units per tower over 8"),
])
def test_units_that_do_not_divide_over_the_devices_are_one_line(strategy, config, devices,
                                                                 message):
  config = _config(config, strategy)
  mesh = parallel.make_mesh(strategy_costs.mesh_shape(config, devices), jax.devices()[:devices])
  if message is None:
    parallel.param_specs(config, mesh)
    return
  with pytest.raises(config_lib.UserError, match=message):
    parallel.param_specs(config, mesh)


def test_every_strategy_has_one_table_of_rules():
  assert set(strategies.RULES) == set(STRATEGIES)
  assert set(strategies.EXPLICIT) | {'data'} == set(STRATEGIES)
  # The model names no mesh axis: its logical names are not the mesh's.
  names = {name for names in (model_lib.CONV_KERNEL, model_lib.FC_KERNEL,
                              model_lib.CLASSIFIER_KERNEL, model_lib.IMAGE_MAPS,
                              model_lib.FC_INPUTS, model_lib.FC_OUTPUTS, model_lib.LOGITS)
           for name in names}
  assert not names & {config_lib.DATA, config_lib.TOWER}
  for table in strategies.RULES.values():
    assert {name for name, _ in table} <= names


# ----------------------------------------------------------------------------------
# A checkpoint does not depend on the strategy.


@pytest.mark.slow
def test_a_run_resumes_under_another_strategy_as_if_it_had_kept_its_own(demo, tmp_path):
  # 3 steps under fsdp, then 3 more under the hybrid, from the checkpoint of step 3: the
  # losses and the evaluation of 6 steps under fsdp. The strategies differ in the order of
  # float32 sums alone, so the steps after the switch agree to rounding.
  from alexnet_jax import metrics  # pylint: disable=import-outside-toplevel
  from tests import training  # pylint: disable=import-outside-toplevel
  fsdp, hybrid = (_config(training.MODEL, strategy) for strategy in ('fsdp', 'hybrid'))
  straight = training.run(demo, tmp_path / 'straight', shape=(2, 1), model=fsdp)
  training.run(demo, tmp_path / 'switched', shape=(2, 1), model=fsdp, num_train_steps=3)
  switched = training.run(demo, tmp_path / 'switched', shape=(2, 1), model=hybrid)
  losses = [{r['step']: r['loss'] for r in metrics.read_metrics(f'{path}/metrics.jsonl')
             if 'loss' in r} for path in (tmp_path / 'straight', tmp_path / 'switched')]
  assert [losses[1][s] for s in (1, 2, 3)] == [losses[0][s] for s in (1, 2, 3)]  # bitwise
  assert [losses[1][s] for s in (4, 5, 6)] == pytest.approx([losses[0][s] for s in (4, 5, 6)],
                                                             rel=1e-5)
  assert switched['top1'] == straight['top1'] and switched['top5'] == straight['top5']
  assert switched['loss'] == pytest.approx(straight['loss'], rel=1e-5)


# ----------------------------------------------------------------------------------
# The performance model (tools/parallelism.py).


def test_the_model_adds_compute_and_communication_at_the_stated_rates():
  from alexnet_jax.tools import parallelism  # pylint: disable=import-outside-toplevel
  link = parallelism.Hardware('test', flops_per_second=1e12, link_bytes_per_second=1e9)
  for strategy in STRATEGIES:
    config = _config(EVEN, strategy)
    costs = strategy_costs.formula(config, 4, 4 * 16)
    got = parallelism.predict(config, 4, 16, link)
    assert got.compute_seconds == pytest.approx(costs.flops / 1e12)
    assert got.communication_seconds == pytest.approx(costs.sent_bytes / 1e9)
    alone = parallelism.predict(config, 1, 16, link)
    assert alone.communication_seconds == 0 and alone.efficiency == pytest.approx(1)
    assert got.efficiency == pytest.approx(alone.step_seconds / got.step_seconds)
  assert parallelism.predict(_config(EVEN, 'towers'), 3, 16, link) is None


def test_the_figure_is_written_from_the_model(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from alexnet_jax.tools import parallelism  # pylint: disable=import-outside-toplevel
  hardware = [parallelism.H100_NVLINK, parallelism.H100_PCIE]
  drawn = parallelism.draw(EVEN, 16, hardware, 8, str(tmp_path / 'parallelism.png'))
  with Image.open(tmp_path / 'parallelism.png') as figure:
    assert figure.format == 'PNG' and figure.width > 1000
  assert set(drawn) == {(strategy, h.name, n) for strategy in STRATEGIES for h in hardware
                        for n in (1, 2, 4, 8)}
  assert drawn['data', parallelism.H100_PCIE.name, 8] == parallelism.predict(
      _config(EVEN, 'data'), 8, 16, parallelism.H100_PCIE)
