"""The towers talk only at the paper's four crossings, counted in lowered and compiled HLO."""

import collections
import dataclasses

import jax
import optax
import pytest

from alexnet_jax import communication
from alexnet_jax import parallel
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


def check_crossings(config, shape, gradient):
  """Raises AssertionError unless tower collectives are exactly the paper's crossings."""
  mesh, lowered, compiled = _hlo_texts(config, shape, gradient)
  expected = GRADIENT if gradient else FORWARD
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


def test_an_extra_crossing_fails_the_check():
  wrong = dataclasses.replace(meshes.TINY, crossings=('conv2',) + meshes.TINY.crossings)
  with pytest.raises(AssertionError, match='conv2'):
    check_crossings(wrong, (1, 2), gradient=False)


def test_no_tower_collectives_when_each_device_holds_both_towers():
  mesh, lowered, compiled = _hlo_texts(meshes.TINY, (2, 1), gradient=True)
  for text in (lowered, compiled):
    ops = communication.collectives(text, mesh)
    assert ops and all(op.axis == parallel.DATA and op.kind == 'all-reduce' for op in ops)


def test_replica_group_formats():
  mesh = meshes.mesh(2, 2)  # device (d, t) has id 2 d + t
  line = ('%ag = f32[4,8]{1,0} all-gather(%x), replica_groups=%s, dimensions={1}, '
          'metadata={op_name="jit(f)/AlexNet/cross_into_fc7/all_gather"}')
  explicit = communication.collectives(line.replace('%s', '{{0,1},{2,3}}'), mesh)
  iota = communication.collectives(line.replace('%s', '[2,2]<=[4]'), mesh)
  transposed = communication.collectives(line.replace('%s', '[2,2]<=[2,2]T(1,0)'), mesh)
  assert explicit == iota
  assert explicit[0].axis == 'tower' and explicit[0].layer == 'fc7'
  assert explicit[0].result_bytes == 4 * 8 * 4
  assert explicit[0].received_bytes == 4 * 8 * 4 / 2
  assert transposed[0].axis == 'data'
