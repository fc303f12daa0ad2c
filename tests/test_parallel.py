"""Every mesh shape computes what one device with grouped convolutions computes."""

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from tests import meshes
from tests import reference

MESH_SHAPES = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 2)]
# Caffe's variant, on 0..255-scale inputs where its LRN (across the towers) matters.
VARIANTS = {'paper': (meshes.TINY, 1.0), 'caffe': (meshes.CAFFE, 60.0)}


@functools.cache
def reference_result(variant):
  config, scale = VARIANTS[variant]
  params = meshes.host_params(config)
  images, labels = meshes.batch(config, scale=scale)

  def loss(p):
    logits = reference.logits(p, images, caffe=variant == 'caffe')
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return logits, grads


@pytest.mark.parametrize('variant, shape', [('paper', shape) for shape in MESH_SHAPES] +
                         [('caffe', shape) for shape in MESH_SHAPES[:4]])
def test_logits_and_gradients_equal_the_grouped_reference(variant, shape):
  config, scale = VARIANTS[variant]
  want_logits, want_grads = reference_result(variant)
  mesh, step = meshes.compiled_loss_and_grad(shape, config)
  params, images, labels = meshes.place(mesh, config, meshes.host_params(config),
                                        *meshes.batch(config, scale=scale))
  with jax.set_mesh(mesh):
    (_, logits), grads = step(params, images, labels, jax.random.key(0))
  np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
  # Float32 sums of large gradients (Caffe's variant) differ by a few ulps of their largest.
  jax.tree.map(lambda g, w: np.testing.assert_allclose(
      g, w, rtol=1e-4, atol=max(1e-6, 1e-6 * np.abs(w).max())), grads, want_grads)
  # The parameters and their gradients keep the tower axis on the mesh's 'tower' axis.
  if shape[1] == 2:
    assert grads['conv2']['kernel'].sharding.spec[0] == parallel.TOWER


def test_cuda_convnet_padding_for_224_style_inputs():
  # 64 -> conv1 gives 1 + ceil(53 / 4) = 15 positions only with 3 pixels padded bottom/right,
  # the same rule that turns 224 into 55.
  config = dataclasses.replace(meshes.TINY, image_size=64)
  params = meshes.host_params(config)
  images, _ = meshes.batch(config)
  got = model_lib.AlexNet(config).apply({'params': params}, images)
  np.testing.assert_allclose(got, reference.logits(params, images), rtol=1e-5, atol=1e-5)


def _train_logits(shape, seed):
  mesh, step = meshes.compiled_loss_and_grad(shape, train=True)
  params, images, labels = meshes.place(mesh, meshes.TINY, meshes.host_params(), *meshes.batch())
  with jax.set_mesh(mesh):
    (_, logits), grads = step(params, images, labels, jax.random.key(seed))
  return np.asarray(logits), grads


def test_dropout_is_reproducible_and_independent_of_the_mesh():
  first, grads = _train_logits((2, 2), seed=3)
  again, grads_again = _train_logits((2, 2), seed=3)
  np.testing.assert_array_equal(first, again)
  jax.tree.map(np.testing.assert_array_equal, grads, grads_again)
  other_seed, _ = _train_logits((2, 2), seed=4)
  assert not np.allclose(first, other_seed)
  # Masks are keyed by (seed, layer, tower, global example index), so every mesh drops
  # the same units: one training step is the same computation on every mesh.
  single, _ = _train_logits((1, 1), seed=3)
  np.testing.assert_allclose(first, single, rtol=1e-5, atol=1e-5)


def test_dropout_masks_are_independent_coin_flips_across_towers_layers_and_examples():
  # Tower 2 gets tower 1's weights, so both towers compute the same fc6 and fc7 inputs:
  # only the dropout keys (seed, layer, tower, example) can make their masks differ.
  params = dict(meshes.host_params())
  for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'):
    params[name] = jax.tree.map(lambda p: p.at[1].set(p[0]), params[name])
  images, _ = meshes.batch()
  net = model_lib.AlexNet(meshes.TINY)

  @jax.jit
  def layers(params, images):
    _, state = net.apply({'params': params}, images, train=True, dropout_rng=jax.random.key(7),
                         capture_intermediates=True, mutable=['intermediates'])
    inter = state['intermediates']
    return {name: (inter[name]['__call__'][0], inter[f'{name}_output'][0])  # before, after
            for name in ('fc6', 'fc7')}

  kept, active = {}, {}
  for name, (before, after) in layers(params, images).items():
    before, after = np.asarray(before), np.asarray(after)
    np.testing.assert_array_equal(before[0], before[1])  # the same activations in both towers
    active[name] = before[0] > 0  # what the ReLU passes: dropout decides only these
    kept[name] = after != 0
    # Survivors are scaled by 1 / (1 - rate); about half the active units are dropped.
    np.testing.assert_allclose(after[kept[name]], 2 * before[kept[name]], rtol=1e-6)
    assert 0.4 < kept[name][:, active[name]].mean() < 0.6

  def agreement(a, b, where):
    """How often two masks agree where both decide: 1/2 for independent fair coins."""
    return (a == b)[np.broadcast_to(where, a.shape)].mean()

  for name, mask in kept.items():
    assert 0.4 < agreement(mask[0], mask[1], active[name]) < 0.6, name  # towers
    assert 0.4 < agreement(mask[:, :-1], mask[:, 1:],
                           active[name][:-1] & active[name][1:]) < 0.6, name  # examples
  # fc6 and fc7 have the same width here.
  assert 0.4 < agreement(kept['fc6'], kept['fc7'], active['fc6'] & active['fc7']) < 0.6


def test_mesh_parsing_and_defaults():
  mesh = lambda text=None: config_lib.MeshConfig(mesh=text)
  assert mesh('data:4,tower:2').parsed() == config_lib.MeshShape(4, 2)
  assert mesh('tower:1, data:3').parsed() == config_lib.MeshShape(3, 1)
  assert mesh().shape(8, towers=2) == config_lib.MeshShape(4, 2)
  assert mesh().shape(3, towers=2) == config_lib.MeshShape(3, 1)
  assert mesh().shape(8, towers=1) == config_lib.MeshShape(8, 1)
  for text in ('data:2', 'data:2,model:2', 'data:0,tower:1', '2x2'):
    with pytest.raises(config_lib.UserError, match='data:D,tower:T'):
      mesh(text).parsed()


@pytest.mark.parametrize('text, devices, towers, message', [
    ('data:2,tower:2', 8, 2, 'needs 4 devices but 8'),
    ('data:1,tower:2', 2, 1, 'needs the two-tower model'),
    ('data:1,tower:4', 4, 2, 'tower axis must be 1 or 2'),
])
def test_mesh_checks(text, devices, towers, message):
  with pytest.raises(config_lib.UserError, match=message):
    config_lib.MeshConfig(mesh=text).shape(devices, towers)


@pytest.mark.parametrize('shape', [(1, 2), (2, 2)])
def test_sharded_forward_returns_features_of_both_towers(shape):
  params, images = meshes.host_params(), meshes.batch()[0]
  _, state = model_lib.AlexNet(meshes.TINY).apply({'params': params}, images,
                                                  mutable=['intermediates'])
  want = np.concatenate(state['intermediates']['fc7_output'][0], axis=-1)
  mesh = meshes.mesh(*shape)
  placed, images, _ = meshes.place(mesh, meshes.TINY, params, images, np.zeros(8, np.int32))
  _, features = jax.jit(parallel.sharded_forward(meshes.TINY, mesh, features='fc7'))(placed, images)
  np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-6)
