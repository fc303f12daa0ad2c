"""Caffe's released AlexNet, as the ONNX Model Zoo ships it, in the two-tower net.

The trained net with the paper's two towers is Caffe's bvlc_alexnet (`group: 2` on conv2,
conv4 and conv5); the ONNX Model Zoo distributes it converted (Caffe -> Caffe2 -> ONNX) at
opsets 3 to 9 and 12 (validated/vision/classification/alexnet, input data_0 float[1, 3,
224, 224], output softmaxout_1). `read` checks the graph node by node against that net,
takes the configuration from it (input size, width, classes; Caffe's LRN, conv1 padding and
pool rounding from the attributes) and maps every layer onto the towers' parameters, in the
tree `model.init_params` makes. It writes nothing.
"""

from __future__ import annotations

import dataclasses

from google.protobuf.message import DecodeError  # what onnx's parser raises
import numpy as np
import onnx
from onnx import numpy_helper

from alexnet_jax import geometry
from alexnet_jax import model as model_lib
from alexnet_jax.config import ModelConfig, UserError


class OnnxImportError(UserError):
  """A file that cannot be imported as the two-tower AlexNet."""


class NotOnnxError(OnnxImportError):
  """The file is not an ONNX model."""


class DamagedOnnxError(OnnxImportError):
  """An ONNX file cut short or damaged."""


class ArchitectureError(OnnxImportError):
  """An ONNX net that is not Caffe's two-tower AlexNet."""


# bvlc_alexnet's nodes in order, under Caffe's layer names. Conversions may leave out the
# Dropout nodes (nothing at inference) and flatten with Reshape or Flatten.
_NODES = (
    ('conv1', 'Conv'), ('relu1', 'Relu'), ('norm1', 'LRN'), ('pool1', 'MaxPool'),
    ('conv2', 'Conv'), ('relu2', 'Relu'), ('norm2', 'LRN'), ('pool2', 'MaxPool'),
    ('conv3', 'Conv'), ('relu3', 'Relu'), ('conv4', 'Conv'), ('relu4', 'Relu'),
    ('conv5', 'Conv'), ('relu5', 'Relu'), ('pool5', 'MaxPool'), ('flatten', 'Reshape|Flatten'),
    ('fc6', 'Gemm'), ('relu6', 'Relu'), ('drop6', 'Dropout'),
    ('fc7', 'Gemm'), ('relu7', 'Relu'), ('drop7', 'Dropout'),
    ('fc8', 'Gemm'), ('prob', 'Softmax'),
)
_OPTIONAL = ('drop6', 'drop7')
_POOLS = {'pool1': 'conv1', 'pool2': 'conv2', 'pool5': 'conv5'}  # pool -> the layer it ends
_DEFAULT_DOMAINS = ('', 'ai.onnx')


def read(path: str) -> tuple[ModelConfig, dict]:
  """(the net's ModelConfig, its float32 numpy parameters in the tree of model.init_params).

  Raises an OnnxImportError (a config.UserError) of one line naming the file and what is
  wrong: NotOnnxError, DamagedOnnxError, ArchitectureError (naming the first layer that
  differs), or OnnxImportError itself for a file it cannot read or weights kept outside it.
  """
  return _Graph(path, _load(path).graph).read()


def _load(path: str) -> onnx.ModelProto:
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as error:
    raise OnnxImportError(f'cannot read {path}: {error.strerror or error}.') from None
  if not data:
    raise NotOnnxError(f'{path} is empty, not an ONNX file.')
  model = onnx.ModelProto()
  try:
    model.ParseFromString(data)
  except DecodeError:
    # Every ONNX writer puts ir_version (field 1, a varint) first: a file that starts
    # so and does not parse was cut short or damaged.
    if data[:1] == b'\x08':
      raise DamagedOnnxError(f'{path} is truncated or damaged: its {len(data):,} bytes do not '
                             'parse as an ONNX model.') from None
    raise NotOnnxError(f'{path} is not an ONNX file (it does not parse as one).') from None
  if not model.graph.node:
    raise NotOnnxError(f'{path} is not an ONNX model: it holds no graph.')
  if not model.opset_import:
    raise DamagedOnnxError(f'{path} is truncated or damaged: it ends after its graph, before '
                           'the opsets it uses.')
  return model


@dataclasses.dataclass
class _Graph:
  path: str
  graph: onnx.GraphProto

  def refuse(self, why: str):
    raise ArchitectureError(f"{self.path} is not Caffe's two-tower AlexNet (bvlc_alexnet): "
                            f'{why}.')

  def read(self) -> tuple[ModelConfig, dict]:
    self.values = self._constants()
    self.image = self._input()
    self.nodes = self._chain()
    size = self._image_size()
    for name in ('norm1', 'norm2'):
      self._check_lrn(name)
    if self.attributes('prob').get('axis', 1) not in (1, -1):
      self.refuse('its softmax does not run over the classes (axis not 1)')
    for spec in model_lib.layer_specs(ModelConfig())[:5]:  # kernels, strides, groups
      self._check_window(spec.name, spec.kernel, spec.stride, groups=self._groups(spec))
    for name in _POOLS:
      self._check_window(name, *geometry.pool_window(ModelConfig()))
    conv1 = self.weights('conv1', 4)
    if conv1.shape[0] % 2:
      self.refuse(f'conv1 has {conv1.shape[0]} output channels, which two towers cannot share')
    fc8 = self._gemm_weight('fc8')
    config = self._geometry(ModelConfig(num_classes=fc8.shape[1], image_size=size,
                                        width=conv1.shape[0] / 96, lrn_variant='caffe',
                                        input_convention='caffe'))
    config.validate()
    return config, self._params(config)

  # ---------------------------------------------------------------------------------
  # The graph: its constants, its chain of nodes, its input.

  def _constants(self) -> dict[str, np.ndarray]:
    values = {}
    tensors = [(t.name, t) for t in self.graph.initializer]
    tensors += [(node.output[0], attribute.t) for node in self.graph.node
                if node.op_type == 'Constant' for attribute in node.attribute
                if attribute.name == 'value']
    for name, tensor in tensors:
      if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise OnnxImportError(f'{self.path} keeps {name} in an external file: not supported.')
      values[name] = numpy_helper.to_array(tensor)
    return values

  def _chain(self) -> dict[str, onnx.NodeProto]:
    """Caffe's layer name -> its node, checking that each node reads the one before."""
    nodes = [node for node in self.graph.node if node.op_type != 'Constant']
    chain, value, before, index = {}, self.image.name, 'the input', 0
    for layer, ops in _NODES:
      node = nodes[index] if index < len(nodes) else None
      if (node is None or node.op_type not in ops.split('|')
          or node.domain not in _DEFAULT_DOMAINS):
        if layer in _OPTIONAL:
          continue
        found = f'a {node.op_type} node' if node else 'the end of the graph'
        self.refuse(f'{layer} should be {ops.replace("|", " or ")}, found {found}')
      if not node.input or node.input[0] != value:
        self.refuse(f'{layer} ({node.op_type}) does not read {before}')
      chain[layer], value, before, index = node, node.output[0], layer, index + 1
    if index < len(nodes):
      self.refuse(f'the graph goes on after the softmax with a {nodes[index].op_type} node')
    return chain

  def _input(self) -> onnx.ValueInfoProto:
    # Old files (IR version 3) list the weights among the inputs too.
    inputs = [value for value in self.graph.input if value.name not in self.values]
    if len(inputs) != 1:
      self.refuse(f'it has {len(inputs)} inputs besides its weights, expected 1 image input')
    return inputs[0]

  def _image_size(self) -> int:
    image = self.image
    dims = [d.dim_value if d.HasField('dim_value') else None
            for d in image.type.tensor_type.shape.dim]
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
      self.refuse(f'its input {image.name} is not float32')
    if len(dims) != 4 or dims[1] != 3:
      self.refuse(f'its input {image.name} is not N x 3 x H x W')
    if dims[2] is None or dims[2] != dims[3]:
      self.refuse(f'its input {image.name} is not a square of fixed size: {dims[2:]}')
    return dims[2]

  def attributes(self, layer: str) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in self.nodes[layer].attribute}

  def weights(self, layer: str, ndim: int) -> np.ndarray:
    node = self.nodes[layer]
    value = self.values.get(node.input[1]) if len(node.input) > 1 else None
    if value is None:
      self.refuse(f'{layer} has no weights in the file')
    if value.dtype != np.float32 or value.ndim != ndim:
      self.refuse(f'{layer} weights are {value.dtype} of shape {list(value.shape)}, expected '
                  f'float32 with {ndim} axes')
    return value

  def bias(self, layer: str, size: int) -> np.ndarray:
    node = self.nodes[layer]
    value = self.values.get(node.input[2]) if len(node.input) > 2 else None
    if value is None or value.size != size or value.dtype != np.float32:
      self.refuse(f'{layer} has no float32 bias of {size} values')
    return value.reshape(-1)

  # ---------------------------------------------------------------------------------
  # Attributes.

  def _check_lrn(self, layer: str) -> None:
    got = self.attributes(layer)
    lrn = model_lib.LRN['caffe']
    # ONNX's defaults; size has none.
    for name, default, want in (('size', None, lrn.n), ('alpha', 1e-4, lrn.alpha),
                                ('beta', 0.75, lrn.beta), ('bias', 1.0, lrn.k)):
      value = got.get(name, default)
      if value is None or not np.isclose(value, want, rtol=1e-6, atol=0):
        self.refuse(f"{layer} has {name} {value:g}, expected {want:g} (Caffe's LRN)"
                    if value is not None else f'{layer} has no size')

  @staticmethod
  def _groups(spec) -> int:
    """conv2, conv4, conv5 are grouped: one group per tower; conv1 and conv3 are not."""
    return 1 if spec.crosses or spec.name == 'conv1' else 2

  def _check_window(self, layer: str, kernel: int, stride: int, groups: int = 1) -> None:
    got = self.attributes(layer)
    auto_pad = got.get('auto_pad', b'NOTSET')
    if auto_pad not in (b'NOTSET', 'NOTSET'):
      self.refuse(f'{layer} uses auto_pad {auto_pad.decode()}, expected explicit pads')
    if any(d != 1 for d in got.get('dilations', [1, 1])):
      self.refuse(f'{layer} is dilated {list(got["dilations"])}, expected no dilation')
    if list(got.get('kernel_shape', [kernel] * 2)) != [kernel] * 2:
      self.refuse(f'{layer} has a {"x".join(map(str, got["kernel_shape"]))} window, expected '
                  f'{kernel}x{kernel}')
    if list(got.get('strides', [1, 1])) != [stride] * 2:
      self.refuse(f'{layer} has strides {list(got.get("strides", [1, 1]))}, expected '
                  f'[{stride}, {stride}]')
    if got.get('group', 1) != groups:
      group = got.get('group', 1)
      why = 'the two towers' if groups == 2 else f'{layer} reads both towers'
      self.refuse(f'{layer} has {group} group{"s" * (group != 1)}, expected {groups} ({why})')

  def _pads(self, layer: str) -> list[int]:
    return list(self.attributes(layer).get('pads', [0, 0, 0, 0]))

  def _geometry(self, config: ModelConfig) -> ModelConfig:
    """config with the conv1 padding and pool rounding whose feature maps the file has.

    A convolution or pool whose padding reaches past its last window computes what the
    smaller padding does: the output sides decide. The paper's rules win where both fit.
    """
    for layer in ('conv1', *_POOLS):
      top, left, bottom, right = self._pads(layer)
      if top or left or bottom != right:
        self.refuse(f'{layer} has pads {[top, left, bottom, right]}, expected zeros at the '
                    'top and left and the same at the bottom and right')
    # The sides the file makes (ONNX's rule: floor, or ceil with ceil_mode); conv2..conv5
    # keep theirs (their pads are checked with their weights).
    stages = [('conv1', config.image_size,
               (config.image_size + self._pads('conv1')[2] - 11) // 4 + 1)]
    window, stride = geometry.pool_window(config)
    for pool in _POOLS:
      span = stages[-1][2] + self._pads(pool)[2] - window
      ceil = self.attributes(pool).get('ceil_mode', 0)
      stages.append((pool, stages[-1][2], (-(-span // stride) if ceil else span // stride) + 1))
    candidates = [dataclasses.replace(config, conv1_padding=padding, pool_rounding=rounding)
                  for padding in ('cuda-convnet', 'valid') for rounding in ('floor', 'ceil')]
    for index, (layer, side_in, side_out) in enumerate(stages):
      fitting = [c for c in candidates if _sides(c)[index] == side_out]
      if not fitting:
        wanted = ' or '.join(sorted({f'{_sides(c)[index]}' for c in candidates}))
        self.refuse(f'{layer} makes {side_out}x{side_out} of {side_in}x{side_in} with pads '
                    f'{self._pads(layer)}, expected {wanted} on a side')
      candidates = fitting
    return candidates[0]

  # ---------------------------------------------------------------------------------
  # Weights.

  def _gemm_weight(self, layer: str) -> np.ndarray:
    """The Gemm's weights as (inputs, outputs)."""
    got = self.attributes(layer)
    if got.get('transA', 0) or got.get('alpha', 1.0) != 1.0 or got.get('beta', 1.0) != 1.0:
      self.refuse(f'{layer} scales or transposes its input (transA, alpha, beta: '
                  f'{got.get("transA", 0)}, {got.get("alpha", 1.0):g}, {got.get("beta", 1.0):g})')
    weights = self.weights(layer, 2)
    return weights.T if got.get('transB', 0) else weights

  def _check_flatten(self, spec) -> None:
    node = self.nodes['flatten']
    if node.op_type == 'Flatten':
      if self.attributes('flatten').get('axis', 1) != 1:
        self.refuse('the Flatten after pool5 does not keep the batch axis alone (axis != 1)')
      return
    # Reshape: the shape is an input from opset 5 on, an attribute before.
    shape = (self.values.get(node.input[1]) if len(node.input) > 1
             else self.attributes('flatten').get('shape'))
    if shape is None or len(shape) != 2 or shape[1] not in (-1, spec.in_features):
      self.refuse(f'the Reshape after pool5 makes {shape}, expected [N, {spec.in_features}]')

  def _params(self, config: ModelConfig) -> dict:
    towers = config.towers
    specs = {spec.name: spec for spec in model_lib.layer_specs(config)}
    params = {}
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
      spec = specs[name]
      weights = self.weights(name, 4)
      want = (spec.features * towers, spec.in_features, spec.kernel, spec.kernel)
      self._check_shape(name, weights.shape, want, config)
      top, left, bottom, right = self._pads(name)
      if name != 'conv1' and ((top, bottom), (left, right)) != spec.padding:
        self.refuse(f'{name} has pads {[top, left, bottom, right]}, expected '
                    f'{[spec.padding[0][0]] * 4}')
      # OIHW, outputs (and groups) in tower order -> (tower, H, W, I, O per tower).
      kernel = weights.reshape(towers, spec.features, *want[1:]).transpose(0, 3, 4, 2, 1)
      params[name] = {'kernel': kernel, 'bias': self.bias(name, want[0]).reshape(towers, -1)}
    self._check_flatten(specs['fc6'])
    for name in ('fc6', 'fc7', 'fc8'):
      spec = specs[name]
      weights = self._gemm_weight(name)
      outputs = spec.features * (1 if name == 'fc8' else towers)
      inputs = spec.in_features * (towers if name == 'fc8' else 1)
      self._check_shape(name, weights.shape[::-1], (outputs, inputs), config)
      if name == 'fc6':
        # The file flattens pool5 as (channel, row, column) over all channels; the net
        # gathers the towers first and flattens (row, column, channel).
        side, channels = specs['conv5'].out_size, specs['conv5'].features * towers
        weights = weights.reshape(channels, side, side, outputs).transpose(1, 2, 0, 3)
        weights = weights.reshape(inputs, outputs)
      if name == 'fc8':  # one classifier over both towers' fc7: its input rows by tower
        kernel = weights.reshape(towers, spec.in_features, outputs)
        bias = self.bias(name, outputs)
      else:              # each tower computes its half of the outputs
        kernel = weights.reshape(inputs, towers, spec.features).transpose(1, 0, 2)
        bias = self.bias(name, outputs).reshape(towers, -1)
      params[name] = {'kernel': kernel, 'bias': bias}
    return {name: {kind: np.ascontiguousarray(value, np.float32) for kind, value in layer.items()}
            for name, layer in params.items()}

  def _check_shape(self, layer: str, got, want, config: ModelConfig) -> None:
    """got, want: (outputs, inputs) of a Gemm, (outputs, inputs per group, H, W) of a Conv."""
    paper = model_lib.PAPER_WIDTHS[config.towers].get(layer)  # fc8's follow the classes
    if got[0] != want[0] and paper:
      self.refuse(f'{layer} has {got[0]} outputs, expected {want[0]} (width {config.width:g} '
                  f'of the paper\'s {paper})')
    if tuple(got) != tuple(want):
      layout = 'outputs x inputs' + (' per group x H x W' if len(want) > 2 else '')
      self.refuse(f'{layer} weights are {"x".join(map(str, got))} ({layout}), expected '
                  f'{"x".join(map(str, want))}')


def _sides(config: ModelConfig) -> tuple[int, int, int, int]:
  maps = geometry.feature_maps(config)
  return maps.conv1, maps.pool1, maps.pool2, maps.pool5
