"""--mode=predict: the top-5 classes of image files, with names and probabilities."""

from __future__ import annotations

import functools
import os
import re
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image

from alexnet_jax.config import UserError
from alexnet_jax import evaluate as evaluate_lib
from alexnet_jax import parallel

_NAMES_FILE = os.path.join(os.path.dirname(__file__), 'imagenet_class_names.txt')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
IMAGE_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP')  # what TensorFlow's decoders read
_URL = re.compile(r'(https?|ftp)://', re.IGNORECASE)


def unreadable(path: str) -> str | None:
  """Why the image file at path cannot be classified ('is empty', ...), or None if it can.

  Decoded whole by PIL first (a JPEG at 1/8 size: every scan, quickly): TensorFlow, handed
  a file it cannot decode, logs its own error lines before raising.
  """
  if os.path.getsize(path) == 0:
    return 'is empty (0 bytes)'
  try:
    with Image.open(path) as image:
      if image.format not in IMAGE_FORMATS:
        return (f'is a {image.format} image; --mode=predict reads '
                f'{", ".join(IMAGE_FORMATS)}')
      image.draft(image.mode, (image.width // 8, image.height // 8))  # JPEG only
      image.load()
  except Image.DecompressionBombError:
    return None  # huge but whole: TensorFlow decodes it
  except Image.UnidentifiedImageError:
    return f'is not an image ({", ".join(IMAGE_FORMATS)})'
  except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for damaged data
    return f'is truncated or damaged ({error})'
  return None


def image_paths(arguments: Sequence[str]) -> list[str]:
  """The image files --image names: files as given, a directory's images in name order.

  UserError for a URL (nothing is downloaded at run time), a missing path, a file that
  is not a readable image (unreadable() says why), or a directory without readable
  images. A directory's unreadable files are skipped with a warning each.
  """
  paths = []
  for argument in arguments:
    if _URL.match(argument):
      raise UserError(f'--image={argument} is a URL: download it first (e.g. curl -O '
                      f'{argument}) and pass the file.')
    if os.path.isdir(argument):
      paths += _directory_images(argument)
    elif '://' in argument:
      paths.append(argument)  # another file system (gs://...) is read by tf.io.gfile
    elif os.path.isfile(argument):
      why = unreadable(argument)
      if why:
        raise UserError(f'--image={argument} {why}.')
      paths.append(argument)
    else:
      raise UserError(f'no such image file: {argument}')
  return paths


def _directory_images(directory: str) -> list[str]:
  """The readable images of a directory, in name order; a warning for each other file."""
  found = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    if not name.lower().endswith(IMAGE_EXTENSIONS):
      continue  # a folder of photos may hold other files
    why = unreadable(path)
    if why:
      logging.warning('Skipping %s: it %s.', path, why)
      continue
    found.append(path)
  if not found:
    raise UserError(f'--image={directory} is a directory without readable image files '
                    f'({", ".join(IMAGE_EXTENSIONS)}).')
  return found


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
