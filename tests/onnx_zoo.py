"""ONNX graphs shaped like the ONNX Model Zoo's bvlc_alexnet, with random weights.

The zoo's files (validated/vision/classification/alexnet, bvlcalexnet-{3,6,7,8,9,12}.onnx,
Caffe -> Caffe2 -> ONNX, 244 MB each, not in this repository) are Caffe's net: conv1
without padding at 224, Caffe's LRN, pools in Caffe's ceil mode (pads on the bottom/right
before opset 10 has ceil_mode), conv2, conv4, conv5 in 2 groups, input data_0 float[1, 3,
224, 224] in Caffe's convention, output softmaxout_1. `alexnet` writes such a graph at any
width and input size, with the Caffe2 converter's names (conv1_w_0, conv1_b_0, ...,
OC2_DUMMY_1), in the node forms the ONNX opsets allow (see its docstring), and
`probabilities` runs one through onnxruntime.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper
import onnxruntime

# Caffe's channels (both towers) per layer.
CHANNELS = {'conv1': 96, 'conv2': 256, 'conv3': 384, 'conv4': 384, 'conv5': 256, 'fc6': 4096,
            'fc7': 4096}
# (kernel, stride, pad, group) of the convolutions.
CONVS = {'conv1': (11, 4, 0, 1), 'conv2': (5, 1, 2, 2), 'conv3': (3, 1, 1, 1),
         'conv4': (3, 1, 1, 2), 'conv5': (3, 1, 1, 2)}


def caffe_pool(side: int) -> tuple[int, int]:
  """(output side, bottom/right padding) of Caffe's 3x3/2 max-pool, which rounds up."""
  out = -(-(side - 3) // 2) + 1
  return out, (out - 1) * 2 + 3 - side


def alexnet(*, opset: int = 9, image_size: int = 224, width: float = 1.0,
            num_classes: int = 1000, seed: int = 0, ceil_mode: bool | None = None,
            dropout: bool | None = None, flatten: bool | None = None,
            trans_b: bool = True) -> onnx.ModelProto:
  """bvlc_alexnet at `width` times its channels, with random weights.

  opset 3: the oldest forms (Reshape's shape an attribute, Gemm's broadcast and Dropout's
  is_test attributes); onnxruntime runs opset 7 and later only.
  opset 9: Reshape by the OC2_DUMMY_1 initializer, Dropout with its mask, pools padded.
  opset 12: by default the newer forms: Flatten, no Dropout, ceil_mode on the pools.
  Up to opset 9 the weights are also listed among the inputs (IR version 3 and 4 files).
  """
  rng = np.random.default_rng(seed)
  newer = opset >= 12
  ceil_mode = newer if ceil_mode is None else ceil_mode
  dropout = not newer if dropout is None else dropout
  flatten = newer if flatten is None else flatten
  weights, nodes = [], []

  def tensor(name, array):
    array = np.asarray(array)
    weights.append(numpy_helper.from_array(
        array.astype(np.float32) if array.dtype == np.float64 else array, name))
    return name

  def node(op, inputs, outputs, **attributes):
    nodes.append(helper.make_node(op, inputs, outputs, **attributes))
    return outputs[0]

  value, side, channels = 'data_0', image_size, 3
  for name, (kernel, stride, pad, group) in CONVS.items():
    out = round(CHANNELS[name] * width)
    fan_in = channels // group * kernel * kernel
    w = tensor(f'{name}_w_0', rng.normal(0, np.sqrt(2 / fan_in),
                                         (out, channels // group, kernel, kernel)))
    b = tensor(f'{name}_b_0', rng.normal(0, 1, out))
    group_attribute = {'group': group} if group > 1 else {}
    value = node('Conv', [value, w, b], [f'{name}_1'], kernel_shape=[kernel, kernel],
                 strides=[stride, stride], pads=[pad] * 4, **group_attribute)
    value = node('Relu', [value], [f'{name}_2'])
    side, channels = (side + 2 * pad - kernel) // stride + 1, out
    layer = name[-1]
    if name in ('conv1', 'conv2'):
      value = node('LRN', [value], [f'norm{layer}_1'], size=5, alpha=1e-4, beta=0.75, bias=1.0)
    if name in ('conv1', 'conv2', 'conv5'):
      side, pad = caffe_pool(side)
      pool = {'ceil_mode': 1, 'pads': [0] * 4} if ceil_mode else {'pads': [0, 0, pad, pad]}
      value = node('MaxPool', [value], [f'pool{layer}_1'], kernel_shape=[3, 3], strides=[2, 2],
                   **pool)
  inputs = channels * side * side
  if flatten:
    value = node('Flatten', [value], ['OC2_DUMMY_0'], axis=1)
  elif opset < 5:
    value = node('Reshape', [value], ['OC2_DUMMY_0'], shape=[1, inputs])
  else:
    shape = tensor('OC2_DUMMY_1', np.array([1, inputs], np.int64))
    value = node('Reshape', [value, shape], ['OC2_DUMMY_0'])
  for name in ('fc6', 'fc7', 'fc8'):
    outputs = num_classes if name == 'fc8' else round(CHANNELS[name] * width)
    std = np.sqrt(2 / inputs) * (0.02 if name == 'fc8' else 1)  # logits of a few units
    w = rng.normal(0, std, (outputs, inputs))
    w = tensor(f'{name}_w_0', w if trans_b else w.T)
    b = tensor(f'{name}_b_0', rng.normal(0, 0.1 if name == 'fc8' else 1, outputs))
    old = {'broadcast': 1} if opset < 7 else {}
    value = node('Gemm', [value, w, b], [f'{name}_1'], transB=int(trans_b), **old)
    inputs = outputs
    if name != 'fc8':
      value = node('Relu', [value], [f'{name}_2'])
      if dropout:
        test = {'is_test': 1} if opset < 7 else {}
        value = node('Dropout', [value], [f'{name}_3', f'_{name}_mask_1'], ratio=0.5, **test)
  node('Softmax', [value], ['softmaxout_1'])

  image = helper.make_tensor_value_info('data_0', onnx.TensorProto.FLOAT,
                                        [1, 3, image_size, image_size])
  listed = [helper.make_tensor_value_info(w.name, w.data_type, w.dims) for w in weights]
  graph = helper.make_graph(
      nodes, 'alexnet', [image] + (listed if opset <= 9 else []),
      [helper.make_tensor_value_info('softmaxout_1', onnx.TensorProto.FLOAT, [1, num_classes])],
      initializer=weights)
  ir_version = 3 if opset < 9 else (4 if opset == 9 else 7)
  return helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)],
                           ir_version=ir_version, producer_name='tests.onnx_zoo')


def probabilities(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
  """onnxruntime's softmaxout_1 for NCHW float32 images, one at a time (the input is 1 x ...)."""
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # no warnings about the weights listed among the inputs
  session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                         providers=['CPUExecutionProvider'])
  return np.concatenate([session.run(['softmaxout_1'], {'data_0': image[None]})[0]
                         for image in images])
