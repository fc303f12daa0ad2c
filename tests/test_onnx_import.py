"""Caffe's bvlc_alexnet from ONNX: on every mesh the towers compute what onnxruntime does.

The graphs are tests/onnx_zoo.py's: the zoo file's structure with random weights, at 1/8
of its channels and 72 pixels (where, as at 224, conv1 leaves pixels unread and the pools
pad their last window), at 227 (the paper's geometry), and once at full size.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np
import onnx
from onnx import helper, numpy_helper
import pytest

from alexnet_jax import config as config_lib
from alexnet_jax import onnx_import
from alexnet_jax import parallel
from alexnet_jax import preprocess
from tests import meshes
from tests import onnx_zoo

SMALL = dict(image_size=72, width=0.125, num_classes=10)
GRAPHS = {
    'opset9': dict(opset=9, **SMALL),    # Reshape by OC2_DUMMY_1, Dropout, pools padded
    'opset12': dict(opset=12, **SMALL),  # Flatten, no Dropout, ceil_mode
    'opset12-pads-transB0': dict(opset=12, ceil_mode=False, trans_b=False, **SMALL),
    'paper-geometry-227': dict(opset=9, image_size=227, width=0.125, num_classes=10),
}
MESH_SHAPES = [(1, 1), (1, 2), (2, 1), (2, 2)]
CAFFE = dict(lrn_variant='caffe', input_convention='caffe')


def _images(size: int, count: int = 4, seed: int = 0) -> np.ndarray:
  """Random photos in Caffe's convention (the file's), NHWC float32."""
  rgb = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), np.uint8)
  return np.asarray(preprocess.Normalizer(preprocess.CAFFE_MEAN_RGB, bgr=True)(rgb))


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """name -> (the graph GRAPHS[name] or `graph`, its imported configuration and parameters)."""
  @functools.cache
  def load(name, **graph):
    model = onnx_zoo.alexnet(**(graph or GRAPHS[name]))
    path = tmp_path_factory.mktemp('graphs') / f'{name}.onnx'
    onnx.save(model, path)
    return (model, *onnx_import.read(str(path)))
  return load


@pytest.fixture(scope='module')
def onnxruntime_run(imported):
  """name -> (images in the file's convention, NHWC; onnxruntime's probabilities of them)."""
  @functools.cache
  def run(name, **graph):
    model, config, _ = imported(name, **graph)
    images = _images(config.image_size, count=2 if name == 'full-size' else 4)
    return images, onnx_zoo.probabilities(model, images.transpose(0, 3, 1, 2))
  return run


@functools.cache
def _forward(config, shape):
  mesh = meshes.mesh(*shape)
  return mesh, jax.jit(parallel.sharded_forward(config, mesh))


def _probabilities(config, params, images, shape) -> np.ndarray:
  mesh, forward = _forward(config, shape)
  placed, images, _ = meshes.place(mesh, config, params, images, np.zeros(len(images), np.int32))
  with jax.set_mesh(mesh):
    return np.asarray(jax.nn.softmax(forward(placed, images)))


@pytest.mark.parametrize('shape', MESH_SHAPES)
@pytest.mark.parametrize('name', GRAPHS)
def test_the_imported_towers_compute_what_onnxruntime_computes(imported, onnxruntime_run, name,
                                                                shape):
  _, config, params = imported(name)
  images, want = onnxruntime_run(name)
  got = _probabilities(config, params, images, shape)
  assert np.abs(got - want).max() <= 1e-5
  assert want.max() < 0.9  # not saturated: a wrong mapping moves every probability


def test_the_configuration_and_parameter_tree_come_from_the_graph(imported):
  _, config, params = imported('opset9')
  assert config == config_lib.ModelConfig(**SMALL, **CAFFE, conv1_padding='valid',
                                          pool_rounding='ceil')
  want = nn.unbox(parallel.abstract_params(config))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  jax.tree.map(lambda got, w: (got.shape, got.dtype) == (w.shape, w.dtype) or pytest.fail(),
               params, want)
  # At 227 conv1 and the pools fit exactly: the paper's geometry, with Caffe's LRN.
  _, at_227, _ = imported('paper-geometry-227')
  assert at_227 == dataclasses.replace(config, image_size=227, conv1_padding='cuda-convnet',
                                       pool_rounding='floor')


def test_every_opset_form_gives_the_same_net(imported):
  _, config, params = imported('opset9')
  for name, graph in [('opset3', dict(opset=3, **SMALL)), ('opset12', None),
                      ('opset12-pads-transB0', None)]:
    _, other_config, other = imported(name, **(graph or {}))
    assert other_config == config, name
    jax.tree.map(np.testing.assert_array_equal, other, params)


def test_the_comparison_sees_a_wrong_mapping(imported, onnxruntime_run):
  _, config, params = imported('opset9')
  images, want = onnxruntime_run('opset9')
  swapped = {**params, 'conv1': {kind: value[::-1] for kind, value in params['conv1'].items()}}
  side, channels = 2, 32  # pool5 at 72 pixels, both towers: fc6's rows in the file's order
  kernel = params['fc6']['kernel']
  file_order = kernel.reshape(2, side, side, channels, -1).transpose(0, 3, 1, 2, 4)
  unpermuted = {**params, 'fc6': {**params['fc6'], 'kernel': file_order.reshape(kernel.shape)}}
  for wrong in (swapped, unpermuted):
    assert np.abs(_probabilities(config, wrong, images, (1, 2)) - want).max() > 1e-3


@pytest.mark.slow
def test_the_full_size_net_at_224(imported, onnxruntime_run):
  _, config, params = imported('full-size', opset=9)
  images, want = onnxruntime_run('full-size', opset=9)
  assert config == config_lib.ModelConfig(image_size=224, **CAFFE, conv1_padding='valid',
                                          pool_rounding='ceil')
  assert sum(p.size for p in jax.tree.leaves(params)) == 60_965_224
  assert np.abs(_probabilities(config, params, images, (1, 2)) - want).max() <= 1e-5


# ----------------------------------------------------------------------------------
# Bad input: one line naming the file and what is wrong.


def _refused(path, error, message):
  with pytest.raises(error) as raised:
    onnx_import.read(str(path))
  assert isinstance(raised.value, config_lib.UserError)
  text = str(raised.value)
  assert message in text and str(path) in text and '\n' not in text, text


def test_a_file_that_is_not_onnx(tmp_path):
  (tmp_path / 'photo.jpg').write_bytes(b'\xff\xd8\xff\xe0\x00\x10JFIF\x00' + bytes(range(256)))
  _refused(tmp_path / 'photo.jpg', onnx_import.NotOnnxError, 'is not an ONNX file')
  (tmp_path / 'empty.onnx').write_bytes(b'')
  _refused(tmp_path / 'empty.onnx', onnx_import.NotOnnxError, 'is empty')
  _refused(tmp_path / 'missing.onnx', onnx_import.OnnxImportError, 'cannot read')


def test_a_truncated_file(tmp_path, imported):
  data = imported('opset9')[0].SerializeToString()
  for cut in (len(data) // 2, len(data) - 3):
    (tmp_path / 'cut.onnx').write_bytes(data[:cut])
    _refused(tmp_path / 'cut.onnx', onnx_import.DamagedOnnxError, 'is truncated or damaged')


def _node(model, output):
  return next(node for node in model.graph.node if node.output[0] == output)


def _set(model, output, **attributes):
  node = _node(model, output)
  for name, value in attributes.items():
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _without_norm1(model):
  _node(model, 'pool1_1').input[0] = 'conv1_2'
  model.graph.node.remove(_node(model, 'norm1_1'))


def _narrower_conv3(model):
  weights = next(w for w in model.graph.initializer if w.name == 'conv3_w_0')
  weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights)[:40], 'conv3_w_0'))


def _another_net(model):
  del model.graph.node[:]
  model.graph.node.append(helper.make_node('MatMul', ['data_0', 'fc6_w_0'], ['softmaxout_1']))


@pytest.mark.parametrize('change, message', [
    (lambda m: _set(m, 'conv2_1', group=1), 'conv2 has 1 group, expected 2 (the two towers)'),
    (lambda m: _set(m, 'conv3_1', group=2), 'conv3 has 2 groups, expected 1 (conv3 reads both'),
    (_without_norm1, 'norm1 should be LRN, found a MaxPool node'),
    (lambda m: _set(m, 'norm2_1', bias=2.0), "norm2 has bias 2, expected 1 (Caffe's LRN)"),
    (lambda m: _set(m, 'pool1_1', kernel_shape=[2, 2]), 'pool1 has a 2x2 window, expected 3x3'),
    (lambda m: _set(m, 'conv1_1', pads=[2, 2, 2, 2]), 'conv1 has pads [2, 2, 2, 2], expected'),
    (lambda m: _set(m, 'pool2_1', pads=[0, 0, 3, 3]),
     'pool2 makes 5x5 of 8x8 with pads [0, 0, 3, 3], expected 4 on a side'),
    (_narrower_conv3, "conv3 has 40 outputs, expected 48 (width 0.125 of the paper's 384)"),
    (lambda m: _set(m, 'softmaxout_1', axis=0), 'its softmax does not run over the classes'),
    (_another_net, 'conv1 should be Conv, found a MatMul node'),
])
def test_another_architecture_is_refused_naming_the_layer(tmp_path, imported, change, message):
  model = onnx.ModelProto()
  model.CopyFrom(imported('opset9')[0])
  change(model)
  onnx.save(model, tmp_path / 'other.onnx')
  _refused(tmp_path / 'other.onnx', onnx_import.ArchitectureError, message)
