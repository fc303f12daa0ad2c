"""The model against the paper: parameter counts, shapes, LRN, init."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import geometry
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from tests import reference

PAPER = config_lib.ModelConfig()


def test_paper_parameter_count():
  assert model_lib.count_params(parallel.abstract_params(PAPER)) == 60_965_224


def test_one_tower_ablation_parameter_count():
  # Footnote 2: conv1..conv4 halved, conv5 and fully-connected layers at full size, no groups.
  convs = [(11, 3, 48), (5, 48, 128), (3, 128, 192), (3, 192, 192), (3, 192, 256)]
  expected = sum(k * k * cin * cout + cout for k, cin, cout in convs)
  expected += 6 * 6 * 256 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
  config = dataclasses.replace(PAPER, towers=1)
  assert model_lib.count_params(parallel.abstract_params(config)) == expected


def test_per_layer_parameters_match_the_paper_table():
  params = nn.unbox(parallel.abstract_params(PAPER))
  per_layer = {name: sum(math.prod(p.shape) for p in jax.tree.leaves(layer))
               for name, layer in params.items()}
  assert per_layer == {'conv1': 34_944, 'conv2': 307_456, 'conv3': 885_120, 'conv4': 663_936,
                       'conv5': 442_624, 'fc6': 37_752_832, 'fc7': 16_781_312,
                       'fc8': 4_097_000}


@pytest.mark.parametrize('size', [224, 227])
def test_output_shapes_after_every_layer(size):
  config = dataclasses.replace(PAPER, image_size=size)
  net = model_lib.AlexNet(config)
  params = nn.unbox(parallel.abstract_params(config))
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  _, state = jax.eval_shape(
      lambda p, x: net.apply({'params': p}, x, capture_intermediates=True,
                             mutable=['intermediates']), params, images)
  inter = state['intermediates']
  conv_out = lambda name: inter[name]['__call__'][0][0].shape  # tower 0, before ReLU/pool
  after = lambda name: inter[f'{name}_output'][0][0].shape                 # tower 0, after pool
  # 55, 27, 27, 13, 13, 13, 13, 6: conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5.
  assert conv_out('conv1') == (2, 55, 55, 48)
  assert after('conv1') == (2, 27, 27, 48)
  assert conv_out('conv2') == (2, 27, 27, 128)
  assert after('conv2') == (2, 13, 13, 128)
  assert after('conv3') == (2, 13, 13, 192)
  assert after('conv4') == (2, 13, 13, 192)
  assert conv_out('conv5') == (2, 13, 13, 128)
  assert after('conv5') == (2, 6, 6, 128)
  assert after('fc6') == (2, 2048) and after('fc7') == (2, 2048)
  assert len(inter['conv1_output'][0]) == 2  # two towers


def test_non_overlapping_pool_keeps_the_sizes_the_paper_compares():
  specs = model_lib.layer_specs(dataclasses.replace(PAPER, overlapping_pool=False))
  assert [s.out_size for s in specs[:5]] == [27, 13, 13, 13, 6]


def test_lrn_matches_the_paper_formula_including_tower_edges():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 40, size=(2, 3, 3, 48)).astype(np.float32)  # large enough to matter
  got = np.asarray(model_lib.local_response_norm(jnp.asarray(a)))
  want = reference.lrn_numpy(a)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The edges see fewer neighbours: channel 0 sums channels 0..2 only.
  edge = a[..., 0] / (2 + 1e-4 * (a[..., :3] ** 2).sum(-1)) ** 0.75
  np.testing.assert_allclose(got[..., 0], edge, rtol=1e-5)
  assert not np.allclose(got, a / 2 ** 0.75, rtol=1e-3)  # the normalization is not a no-op


def test_lrn_does_not_mix_towers():
  config = config_lib.ModelConfig(num_classes=4, image_size=67, width=0.125, init='he')
  params = nn.unbox(model_lib.init_params(config, jax.random.key(0)))
  x = jax.random.normal(jax.random.key(1), (2, 67, 67, 3))
  net = model_lib.AlexNet(config)
  _, state = net.apply({'params': params}, x, mutable=['intermediates'])
  base = state['intermediates']['conv1_output'][0]
  # Changing tower 1's conv1 weights leaves tower 0's normalized, pooled output alone.
  params['conv1']['kernel'] = params['conv1']['kernel'].at[1].multiply(3.0)
  _, state = net.apply({'params': params}, x, mutable=['intermediates'])
  changed = state['intermediates']['conv1_output'][0]
  np.testing.assert_array_equal(changed[0], base[0])
  assert not np.allclose(changed[1], base[1])


def test_caffes_lrn_runs_over_both_towers_as_onnx_defines_it():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 40, size=(2, 3, 3, 96)).astype(np.float32)
  towers = [jnp.asarray(a[..., :48]), jnp.asarray(a[..., 48:])]
  widened = model_lib.LocalTowers(2).halo(towers, 2)
  got = np.concatenate([model_lib.local_response_norm(t, 'caffe', w)
                        for t, w in zip(towers, widened)], axis=-1)
  # ONNX's LRN(size=5, alpha=1e-4, beta=0.75, bias=1): alpha / size, over all 96 channels.
  np.testing.assert_allclose(got, reference.lrn_numpy(a, k=1.0, alpha=1e-4 / 5), rtol=1e-5)
  # Only the two channels on each side of the towers' boundary read the other tower.
  within = np.concatenate([reference.lrn_numpy(t, k=1.0, alpha=1e-4 / 5) for t in towers], -1)
  crossing = ~np.isclose(got, within, rtol=1e-6).all(axis=(0, 1, 2))
  assert np.flatnonzero(crossing).tolist() == [46, 47, 48, 49]


def test_caffes_geometry_at_224_and_227():
  caffe = dataclasses.replace(PAPER, conv1_padding='valid', pool_rounding='ceil')
  pools = lambda config: [(s.conv_size, s.pool_pad, s.out_size)
                          for s in model_lib.layer_specs(config) if s.pool]
  # 224: conv1 reads 1 + floor(213 / 4) = 54 positions; pool1's (54 - 3) / 2 + 1 = 26.5
  # windows round up to 27, the last padded by a row and a column; pool2, pool5 are exact.
  at_224 = dataclasses.replace(caffe, image_size=224)
  assert geometry.feature_maps(at_224)[:2] == (54, 0)
  assert pools(at_224) == [(54, 1, 27), (27, 0, 13), (13, 0, 6)]
  assert model_lib.count_params(parallel.abstract_params(at_224)) == 60_965_224
  # 227 is exact under both rules.
  assert model_lib.layer_specs(caffe) == model_lib.layer_specs(PAPER)


@pytest.mark.parametrize('scheme', config_lib.INIT_SCHEMES)
def test_init_schemes(scheme):
  config = config_lib.ModelConfig(init=scheme, width=0.25, image_size=67, num_classes=10)
  params = nn.unbox(model_lib.init_params(config, jax.random.key(0)))
  ones = {'conv2', 'conv4', 'conv5', 'fc6', 'fc7'}
  for name, layer in params.items():
    bias, kernel = np.asarray(layer['bias']), np.asarray(layer['kernel'])
    if scheme == 'paper':
      assert np.all(bias == (1.0 if name in ones else 0.0)), name
      assert abs(kernel.std() - 0.01) < 0.002, name
    elif scheme == 'caffe':
      assert np.all(bias == (0.1 if name in ones else 0.0)), name
      want = 0.005 if name in ('fc6', 'fc7') else 0.01
      assert abs(kernel.std() - want) < 0.2 * want, name
    else:
      assert np.all(bias == 0.0), name
      fan_in = math.prod(kernel.shape[1:-1])  # per tower: the leading axis is the tower
      assert abs(kernel.std() - math.sqrt(2 / fan_in)) < 0.25 * math.sqrt(2 / fan_in), name
  # The two towers get different weights.
  assert not np.allclose(params['conv1']['kernel'][0], params['conv1']['kernel'][1])


@pytest.mark.parametrize('bad, message', [
    (dict(towers=3), 'towers must be 1 or 2'),
    (dict(image_size=40), 'too small'),
    (dict(dropout_rate=1.0), 'dropout_rate'),
    (dict(crossings=('conv3', 'fc6')), 'include fc8'),
    (dict(lrn_variant='tensorflow'), 'lrn_variant must be one of paper, caffe'),
    (dict(pool_rounding='round'), 'pool_rounding must be one of floor, ceil'),
])
def test_bad_configs_are_refused(bad, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(PAPER, **bad).validate()


def test_smallest_image_size():
  config = dataclasses.replace(PAPER, image_size=geometry.smallest_image_size(PAPER))
  config.validate()
  assert model_lib.layer_specs(config)[4].out_size == 1
  with pytest.raises(ValueError):
    dataclasses.replace(config, image_size=config.image_size - 1).validate()
