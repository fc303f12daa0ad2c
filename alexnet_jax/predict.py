"""--mode=predict: the top-5 classes of image files, with names and probabilities."""

from __future__ import annotations

import functools
import os
import re
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from alexnet_jax.config import UserError
from alexnet_jax import evaluate as evaluate_lib
from alexnet_jax import parallel

_NAMES_FILE = os.path.join(os.path.dirname(__file__), 'imagenet_class_names.txt')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
_URL = re.compile(r'(https?|ftp)://', re.IGNORECASE)


def image_paths(arguments: Sequence[str]) -> list[str]:
  """The image files --image names: files as given, a directory's images in name order.

  UserError for a URL (nothing is downloaded at run time), a missing path, or a
  directory without images.
  """
  paths = []
  for argument in arguments:
    if _URL.match(argument):
      raise UserError(f'--image={argument} is a URL: download it first (e.g. curl -O '
                             f'{argument}) and pass the file.')
    if os.path.isdir(argument):
      found = sorted(os.path.join(argument, name) for name in os.listdir(argument)
                     if name.lower().endswith(IMAGE_EXTENSIONS)
                     and os.path.isfile(os.path.join(argument, name)))
      if not found:
        raise UserError(f'--image={argument} is a directory without image files '
                               f'({", ".join(IMAGE_EXTENSIONS)}).')
      paths += found
    elif '://' in argument or os.path.isfile(argument):
      paths.append(argument)  # another file system (gs://...) is read by tf.io.gfile
    else:
      raise UserError(f'no such image file: {argument}')
  return paths


@functools.cache
def imagenet_names() -> dict[str, str]:
  """ImageNet synset -> WordNet lemmas ('n01440764' -> 'tench, Tinca tinca')."""
  with open(_NAMES_FILE) as f:
    return dict(line.rstrip('\n').split('\t', 1) for line in f if not line.startswith('#'))


def readable(labels: Sequence[str], overrides: dict[str, str] | None = None) -> list[str]:
  """Human names for dataset labels (ImageNet synsets become their lemmas)."""
  names = {**imagenet_names(), **(overrides or {})}
  return [names.get(label, label) for label in labels]


def top5(model_config, mesh, params, crops: np.ndarray,
         normalizer) -> tuple[np.ndarray, np.ndarray]:
  """crops uint8 (N, C, S, S, 3), or squares (N, R, R, 3) -> (probabilities, class indices),
  each (N, 5)."""
  forward = parallel.sharded_forward(model_config, mesh)
  data = mesh.shape[parallel.DATA]
  count = crops.shape[0]
  padded = np.concatenate([crops, np.zeros((-count % data,) + crops.shape[1:], crops.dtype)])
  # Every process holds all the images; each places the rows its devices need.
  images = jax.make_array_from_callback(padded.shape, parallel.batch_sharding(mesh),
                                        lambda index: padded[index])

  # Replicated results: every process can read them, also when 'data' spans processes.
  @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P()))
  def run(params, images):
    log_probs = evaluate_lib.crop_log_probabilities(forward, params, images, normalizer)
    log_top5, classes = jax.lax.top_k(log_probs, min(5, log_probs.shape[-1]))
    return jnp.exp(log_top5), classes

  with jax.set_mesh(mesh):
    probs, classes = jax.device_get(run(params, images))
  return probs[:count], classes[:count]


def format_predictions(paths, probs, classes, names: Sequence[str]) -> str:
  lines = []
  for path, p, c in zip(paths, probs, classes):
    lines.append(path)
    lines += [f'  {rank}. {100 * prob:6.2f}%  {names[k]}' for rank, (prob, k) in
              enumerate(zip(p, c), start=1)]
  return '\n'.join(lines)
