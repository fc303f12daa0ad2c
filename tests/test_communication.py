"""The towers talk only at the paper's four crossings (and Caffe's LRN halos), counted in HLO."""

import collections
import dataclasses

import jax
import optax
import pytest

from alexnet_jax.tools import communication
from alexnet_jax.tools import summary
from alexnet_jax import parallel
from alexnet_jax import train
from tests import meshes

# Forward: an all-gather into conv3, fc6 and fc7 (each tower reads both towers'
# activations) and an all-reduce of fc8's per-tower partial logits.
FORWARD = collections.Counter({('all-gather', 'conv3'): 1, ('all-gather', 'fc6'): 1,
                               ('all-gather', 'fc7'): 1, ('all-reduce', 'fc8'): 1})
# The gradient adds each gather's transpose, a reduce-scatter at the same crossing; the
# psum's transpose is free (the logits' cotangent is already the same on both towers).
GRADIENT = FORWARD + collections.Counter({('reduce-scatter', 'conv3'): 1,
                                          ('reduce-scatter', 'fc6'): 1,
                                          ('reduce-scatter', 'fc7'): 1})
# Caffe's LRN reads the neighbouring tower's two edge channels after conv1 and conv2: one
# all-gather each, and its transpose in the gradient.
LRN_HALOS = collections.Counter({('all-gather', 'conv1_lrn'): 1, ('all-gather', 'conv2_lrn'): 1})
CAFFE_FORWARD = FORWARD + LRN_HALOS
CAFFE_GRADIENT = GRADIENT + LRN_HALOS + collections.Counter({('reduce-scatter', 'conv1_lrn'): 1,
                                                             ('reduce-scatter', 'conv2_lrn'): 1})


def _hlo_texts(config, shape, gradient: bool):
  """(lowered, compiled) HLO of the forward pass or of the gradient on a mesh."""
  mesh = meshes.mesh(*shape)
  forward = parallel.sharded_forward(config, mesh)
  params = parallel.abstract_sharded_params(config, mesh)
  data = parallel.batch_sharding(mesh)
  size = config.image_size
  images = jax.ShapeDtypeStruct((meshes.BATCH, size, size, 3), 'float32', sharding=data)
  labels = jax.ShapeDtypeStruct((meshes.BATCH,), 'int32', sharding=data)

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()

  fn = jax.grad(loss) if gradient else (lambda p, x, y: forward(p, x))
  with jax.set_mesh(mesh):
    lowered = jax.jit(fn).lower(params, images, labels)
  return mesh, lowered.as_text(dialect='hlo', debug_info=True), lowered.compile().as_text()


def tower_collectives(ops):
  return collections.Counter((op.kind, op.layer) for op in ops if op.axis == parallel.TOWER)


def check_crossings(config, shape, gradient, expected=None):
  """Raises AssertionError unless tower collectives are exactly `expected` (default: the
  paper's crossings)."""
  mesh, lowered, compiled = _hlo_texts(config, shape, gradient)
  expected = expected or (GRADIENT if gradient else FORWARD)
  for stage, text in (('lowered', lowered), ('compiled', compiled)):
    ops = communication.collectives(text, mesh)
    got = tower_collectives(ops)
    assert got == expected, f'{stage}: {dict(got)} != {dict(expected)}'
    assert sum(got.values()) == sum(expected.values())
    others = {(op.kind, op.axis) for op in ops if op.axis != parallel.TOWER}
    if gradient and shape[0] > 1:  # data parallelism sums the gradients, nothing else
      assert others == {('all-reduce', parallel.DATA)}, f'{stage}: {others}'
    else:
      assert not others, f'{stage}: {others}'


@pytest.mark.parametrize('shape', [(1, 2), (2, 2)])
@pytest.mark.parametrize('gradient', [False, True], ids=['forward', 'gradient'])
def test_towers_exchange_only_at_the_four_crossings(shape, gradient):
  check_crossings(meshes.TINY, shape, gradient)


@pytest.mark.parametrize('shape', [(1, 2), (2, 2)])
@pytest.mark.parametrize('gradient', [False, True], ids=['forward', 'gradient'])
def test_caffes_lrn_adds_one_exchange_of_edge_channels_per_normalized_layer(shape, gradient):
  check_crossings(meshes.CAFFE, shape, gradient, CAFFE_GRADIENT if gradient else CAFFE_FORWARD)


def test_summary_reports_the_lrn_halo_with_its_bytes_per_image():
  text = summary.run(meshes.CAFFE, meshes.mesh(2, 2), meshes.BATCH, train.lower_train_step)
  rows = {tuple(line.split()[:4]): line.split() for line in text.splitlines()
          if line.startswith(('forward', 'backward'))}
  # conv1's map is 16x16 at 72 pixels: each device receives the other tower's 2 edge
  # channels, 16 x 16 x 2 float32 per image; conv2's map is 8x8.
  assert rows['forward', 'tower', 'conv1_lrn', 'all-gather'][5] == f'{16 * 16 * 2 * 4:,}'
  assert rows['forward', 'tower', 'conv2_lrn', 'all-gather'][5] == f'{8 * 8 * 2 * 4:,}'
  assert rows['backward', 'tower', 'conv1_lrn', 'reduce-scatter'][5] == f'{16 * 16 * 2 * 4:,}'
  conv1 = next(line for line in text.splitlines() if line.startswith('conv1 '))
  assert 'ReLU, LRN over both towers, pool' in conv1


def test_an_extra_crossing_fails_the_check():
  wrong = dataclasses.replace(meshes.TINY, crossings=('conv2',) + meshes.TINY.crossings)
  with pytest.raises(AssertionError, match='conv2'):
    check_crossings(wrong, (1, 2), gradient=False)


def test_no_tower_collectives_when_each_device_holds_both_towers():
  mesh, lowered, compiled = _hlo_texts(meshes.TINY, (2, 1), gradient=True)
  for text in (lowered, compiled):
    ops = communication.collectives(text, mesh)
    assert ops and all(op.axis == parallel.DATA and op.kind == 'all-reduce' for op in ops)


_LINE = ('%ag = f32[4,8]{1,0} all-gather(%x), channel_id=1, replica_groups=GROUPS, '
         'dimensions={1}, use_global_device_ids=true, '
         'metadata={op_name="jit(f)/AlexNet/cross_into_fc7/all_gather"}')


def _read(groups: str, mesh):
  return communication.collectives(_LINE.replace('GROUPS', groups), mesh)


def test_replica_group_formats_of_every_supported_jax():
  mesh = meshes.mesh(2, 2)  # device (d, t) has id 2 d + t
  explicit = _read('{{0,1},{2,3}}', mesh)                  # jax 0.10, lowered
  iota = _read('[2,2]<=[4]', mesh)                         # jax 0.10, compiled
  named = _read("mesh['data'=2,'tower'=2] {'tower'}", mesh)  # jax 0.12
  assert explicit == iota == named
  assert explicit[0].axis == 'tower' and explicit[0].layer == 'fc7'
  assert explicit[0].result_bytes == 4 * 8 * 4
  assert explicit[0].received_bytes == 4 * 8 * 4 / 2
  assert _read('[2,2]<=[2,2]T(1,0)', mesh)[0].axis == 'data'
  assert _read("mesh['data'=2,'tower'=2] {'data'}", mesh)[0].axis == 'data'
  both = _read("mesh['data'=2,'tower'=2] {'data','tower'}", mesh)[0]
  assert (both.axis, both.group_size) == ('data+tower', 4)
  everyone = _read('{}', mesh)[0]  # HLO's empty list: one group of every device
  assert (everyone.axis, everyone.group_size) == ('data+tower', 4)
  with_ids = _read("mesh['data'=2,'tower'=2], device_ids=([2,2]<=[2,2]T(1,0)) {'tower'}", mesh)
  assert (with_ids[0].axis, with_ids[0].group_size) == ('tower', 2)


def test_a_mesh_the_partitioner_names_itself_is_read_as_device_ids_laid_out_on_it():
  # jit programs (--parallelism=data) on jax 0.10: axes axis_0, axis_1, ... of XLA's own.
  mesh = meshes.mesh(2, 2)  # device (d, t) has id 2 d + t
  own = _read("mesh['axis_0'=2,'axis_1'=2] {'axis_0'}", mesh)[0]
  assert (own.axis, own.group_size) == ('data', 2)
  assert _read("mesh['axis_0'=2,'axis_1'=2] {'axis_1'}", mesh)[0].axis == 'tower'
  both = _read("mesh['axis_0'=4,'axis_1'=1,'axis_2'=1] {'axis_0'}", mesh)[0]
  assert (both.axis, both.group_size) == ('data+tower', 4)
  swapped = _read("mesh['axis_0'=2,'axis_1'=2], device_ids=([2,2]<=[2,2]T(1,0)) {'axis_1'}",
                  mesh)[0]
  assert swapped.axis == 'data'


def test_named_sub_axis_counts_its_own_size():
  mesh = meshes.mesh(4, 1)
  sub = _read("mesh['data'=4,'tower'=1] {'data':(1)2}", mesh)[0]
  assert (sub.axis, sub.group_size) == ('data', 2)
  assert sub.received_bytes == 4 * 8 * 4 / 2


def test_a_group_of_one_device_is_no_traffic_in_every_form():
  mesh = meshes.mesh(1, 2)  # the 'data' axis has size 1
  assert _read('{{0},{1}}', mesh) == []
  assert _read('[2,1]<=[2]', mesh) == []
  assert _read("mesh['data'=1,'tower'=2] {'data'}", mesh) == []
  assert _read("mesh['data'=1,'tower'=2] {}", mesh) == []


def test_groups_the_reader_cannot_read_are_unattributed_not_guessed():
  mesh = meshes.mesh(1, 2)
  for groups in ("mesh['x'=2] {'x'}", 'somethingnew(0,1)'):
    op, = _read(groups, mesh)
    assert op.axis == communication.UNATTRIBUTED and op.group_size == 2, groups
  op, = communication.collectives(_LINE.replace('replica_groups=GROUPS, ', ''), mesh)
  assert op.axis == communication.UNATTRIBUTED
