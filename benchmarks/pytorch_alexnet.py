"""The paper's AlexNet in PyTorch: the reference for alexnet_jax's CPU speed.

The same net and training step as `python -m alexnet_jax.main --mode=benchmark`, built
from the same layer table (`alexnet_jax.model.layer_specs`): the two towers as groups=2
convolutions (conv2, conv4, conv5; conv1 reads the whole image, conv3 and the dense
layers read both towers), ReLU, LRN within each tower's channels, overlapping 3x3/2
max-pool, dropout 0.5 after fc6 and fc7, fc8 over both towers, softmax cross-entropy;
uint8 batches made once in memory, PCA colour noise and mean subtraction in the step;
float32, channels_last.

Two deliberate differences, neither of which changes the work per step:
- LRN: torch.nn.LocalResponseNorm divides alpha by n, so alpha = 5 * 1e-4 gives the
  paper's per-term 1e-4 (k=2, n=5, beta=0.75).
- SGD: torch.optim.SGD(momentum=0.9, weight_decay=5e-4) puts the learning rate outside
  the velocity (v <- 0.9 v + g + wd w; w <- w - lr v) where the paper puts it inside;
  the two differ only after a learning-rate change, never in cost. It also decays biases.

Same timing protocol as alexnet_jax.benchmark: warm-up steps, then timed windows of
back-to-back steps; the median of images/s over the windows.

  pip install torch==2.13.0   # the CPU build; for this measurement only
  python benchmarks/pytorch_alexnet.py --image_size=99 --batch_size=64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alexnet_jax import config as config_lib
from alexnet_jax import geometry  # pylint: disable=wrong-import-position
from alexnet_jax import model as model_lib  # pylint: disable=wrong-import-position
from alexnet_jax import preprocess  # pylint: disable=wrong-import-position


class TowerLRN(nn.Module):
  """The paper's LRN within each tower's channels."""

  def __init__(self, towers: int):
    super().__init__()
    self.towers = towers
    lrn = model_lib.LRN['paper']
    self.lrn = nn.LocalResponseNorm(lrn.n, alpha=lrn.n * lrn.alpha, beta=lrn.beta, k=lrn.k)

  def forward(self, x):
    return torch.cat([self.lrn(part) for part in x.chunk(self.towers, dim=1)], dim=1)


def alexnet(config: config_lib.ModelConfig) -> nn.Sequential:
  """The net of `config` (paper crossings) as one PyTorch model over both towers."""
  if tuple(config.crossings) != config_lib.PAPER_CROSSINGS:
    raise ValueError('only the paper\'s crossings (conv3, fc6, fc7, fc8) are built here.')
  towers, layers = config.towers, []
  window, stride = geometry.pool_window(config)
  for spec in model_lib.layer_specs(config):
    grouped = not spec.crosses and spec.name != 'conv1'
    groups = towers if grouped else 1
    outputs = spec.features * (1 if spec.name == 'fc8' else towers)
    if spec.is_conv:
      (top, bottom), (left, right) = spec.padding
      if (top, left) != (bottom, right):  # conv1 at 224: cuda-convnet's bottom/right padding
        layers.append(nn.ZeroPad2d((left, right, top, bottom)))
        top = left = 0
      layers.append(nn.Conv2d(spec.in_features * groups, outputs, spec.kernel, spec.stride,
                              (top, left), groups=groups))
    else:
      if spec.name == 'fc6':
        layers.append(nn.Flatten())
      inputs = spec.in_features * (towers if spec.name == 'fc8' else 1)
      layers.append(nn.Linear(inputs, outputs))
    if spec.relu:
      layers.append(nn.ReLU(inplace=True))
    if spec.lrn:
      layers.append(TowerLRN(towers))
    if spec.pool:
      layers.append(nn.MaxPool2d(window, stride))
    if spec.dropout and config.dropout_rate > 0:
      layers.append(nn.Dropout(config.dropout_rate))
  for layer in layers:  # the paper's init (speed does not depend on it)
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      nn.init.normal_(layer.weight, std=0.01)
      nn.init.zeros_(layer.bias)
  return nn.Sequential(*layers)


class TorchStep:
  """The training step on synthetic uint8 batches made once; `time(steps)` times it."""

  def __init__(self, config: config_lib.ModelConfig, batch_size: int, *, seed: int = 0,
               pca_std: float = 0.1, learning_rate: float = 0.01):
    if config.dtype != 'float32':
      raise ValueError('the PyTorch reference runs float32 only.')
    torch.manual_seed(seed)
    self.model = alexnet(config).to(memory_format=torch.channels_last).train()
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=learning_rate, momentum=0.9,
                                     weight_decay=5e-4)
    size = config.image_size
    self._batches = [(torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8),
                      torch.randint(0, config.num_classes, (batch_size,)))
                     for _ in range(2)]
    self._mean = torch.tensor(preprocess.CHANNEL_MEAN).view(1, 3, 1, 1)
    self._pca = torch.tensor(preprocess.PCA_EIGVAL)[:, None] * torch.tensor(preprocess.PCA_EIGVEC).T
    self._pca_std = pca_std
    self._step = 0

  def _normalize(self, images):
    """uint8 NHWC -> float32 NCHW in channels_last memory, + PCA colour shift - mean."""
    x = images.permute(0, 3, 1, 2).float()
    shift = (self._pca_std * torch.randn(x.shape[0], 3)) @ self._pca
    return x + (shift[:, :, None, None] - self._mean)

  def step(self) -> torch.Tensor:
    images, labels = self._batches[self._step % len(self._batches)]
    self._step += 1
    self.optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(self.model(self._normalize(images)), labels)
    loss.backward()
    self.optimizer.step()
    return loss

  def time(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      loss = self.step()
    loss.item()  # eager CPU work is done by now; this only reads the number
    return time.perf_counter() - start


def check_same_net() -> None:
  """Asserts that this is the paper's net: 60,965,224 parameters, LRN within each tower.

  Runs before every measurement (torch is installed for the CPU comparison only, so this
  check lives here rather than in the test suite).
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  net = alexnet(config_lib.ModelConfig())
  assert sum(p.numel() for p in net.parameters()) == 60_965_224
  assert net(torch.zeros(1, 3, 227, 227)).shape == (1, 1000)
  # LRN within each tower's 48 channels, in the paper's convention.
  activations = np.maximum(30 * np.random.default_rng(0).normal(size=(2, 96, 5, 5)), 0)
  activations = activations.astype(np.float32)
  got = TowerLRN(2)(torch.tensor(activations)).numpy()
  towers = np.split(activations.transpose(0, 2, 3, 1), 2, axis=-1)
  want = np.concatenate([model_lib.local_response_norm(t) for t in towers], axis=-1)
  np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), rtol=1e-5)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_size', type=int, default=227)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--towers', type=int, default=2)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10, help='steps per timed window')
  parser.add_argument('--repeats', type=int, default=5, help='timed windows')
  args = parser.parse_args()
  config = config_lib.ModelConfig(towers=args.towers, num_classes=args.num_classes,
                                 image_size=args.image_size, width=args.width)
  config.validate()
  bench = TorchStep(config, args.batch_size)
  bench.time(args.warmup)
  rates = sorted(args.steps * args.batch_size / bench.time(args.steps)
                 for _ in range(args.repeats))
  print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, float32, '
        f'batch {args.batch_size}, {args.image_size}x{args.image_size}, width {args.width}')
  print(f'images/s: {statistics.median(rates):,.1f} (median; windows {rates[0]:,.1f}..'
        f'{rates[-1]:,.1f})')


if __name__ == '__main__':
  main()
