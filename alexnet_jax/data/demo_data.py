"""A small ImageNet-format manual_dir, drawn by the project itself.

`write_demo_imagenet` writes what the TFDS `imagenet2012` builder reads from a real
ImageNet download, only small:

  MANUAL_DIR/ILSVRC2012_img_train.tar   one tar per synset (n01440764.tar, ...), each
                                        holding JPEGs named n01440764_1.JPEG, ...
  MANUAL_DIR/ILSVRC2012_img_val.tar     ILSVRC2012_val_00000001.JPEG, ...

The task is learnable: each of 8 classes is a shape of its own colour family, drawn at
a random position, scale and rotation over a cluttered background, so a small AlexNet
learns it in minutes on a CPU. The synset ids are real (Imagenette's), so the real
builder accepts them; the shapes have nothing to do with those synsets' meaning.

The builder labels validation images by POSITION (sorted names zipped with its own
label file), so the demo val tar gets meaningless labels: evaluate demo runs on a
held-out slice of train (train_split='train[:90%]', eval_split='train[90%:]').

With `oddities=True` it adds the file types real ImageNet has, each as an extra
training image: a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG, a 100x60 image and
one corrupt file that no decoder can read.

With `photos=True` every image is instead a crop of a real photograph (matplotlib's
sample photo of Grace Hopper, random window, flip and colour cast) at ImageNet's usual
500x375 or 375x500: what input-pipeline benchmarks decode. Not learnable (one photo for
all classes).

  python -m alexnet_jax.main --mode=prepare --demo_data --manual_dir=DIR --data_dir=TFDS_DIR
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import tarfile
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
VAL_FILE = 'ILSVRC2012_val_%08d.JPEG'


def _circle(draw, box, fill, rng):
  draw.ellipse(box, fill=fill)


def _polygon(points_fn):
  def drawer(draw, box, fill, rng):
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    angle = rng.uniform(0, 2 * math.pi)
    points = [(cx + r * a * math.cos(t + angle), cy + r * a * math.sin(t + angle))
              for a, t in points_fn()]
    draw.polygon(points, fill=fill)
  return drawer


_square = _polygon(lambda: [(1.0, math.pi / 4 + k * math.pi / 2) for k in range(4)])
_triangle = _polygon(lambda: [(1.0, k * 2 * math.pi / 3) for k in range(3)])
_star = _polygon(lambda: [(1.0 if k % 2 == 0 else 0.4, k * math.pi / 5) for k in range(10)])


def _ring(draw, box, fill, rng):
  width = max(2, int((box[2] - box[0]) * 0.15))
  draw.ellipse(box, outline=fill, width=width)


def _cross(draw, box, fill, rng):
  x0, y0, x1, y1 = box
  t = (x1 - x0) * 0.14
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  draw.rectangle((x0, cy - t, x1, cy + t), fill=fill)
  draw.rectangle((cx - t, y0, cx + t, y1), fill=fill)


def _stripes(draw, box, fill, rng):
  x0, y0, x1, y1 = box
  step = max(4, (y1 - y0) / 6)
  y = y0
  while y < y1:
    draw.rectangle((x0, y, x1, min(y1, y + step / 2)), fill=fill)
    y += step


def _checker(draw, box, fill, rng):
  x0, y0, x1, y1 = box
  cell = max(3, (x1 - x0) / 4)
  for i in range(4):
    for j in range(4):
      color = fill if (i + j) % 2 == 0 else (20, 20, 20)
      draw.rectangle((x0 + i * cell, y0 + j * cell, x0 + (i + 1) * cell, y0 + (j + 1) * cell),
                     fill=color)


@dataclasses.dataclass(frozen=True)
class DemoClass:
  synset: str
  shape: str
  color: tuple[int, int, int]
  draw: Callable


# Imagenette's synsets (all in TFDS's imagenet2012 label list); shapes chosen to differ
# from each other in outline and colour, so both cues teach the class.
CLASSES = (
    DemoClass('n01440764', 'red disc', (220, 40, 40), _circle),
    DemoClass('n02102040', 'blue square', (40, 70, 220), _square),
    DemoClass('n02979186', 'green triangle', (40, 190, 60), _triangle),
    DemoClass('n03000684', 'orange stripes', (240, 150, 20), _stripes),
    DemoClass('n03028079', 'purple ring', (150, 50, 200), _ring),
    DemoClass('n03394916', 'cyan cross', (30, 200, 210), _cross),
    DemoClass('n03417042', 'yellow checkerboard', (235, 225, 40), _checker),
    DemoClass('n03425413', 'magenta star', (230, 40, 170), _star),
)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """A muted colour gradient with noise: clutter without the classes' colours."""
  base = rng.uniform(60, 190, size=3).astype(np.float32)
  base = 0.5 * base + 0.5 * base.mean()  # desaturated: colour belongs to the objects
  tilt = rng.uniform(-25, 25, size=3).astype(np.float32)
  ramp = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :, None] * tilt + base
  rows = rng.normal(0, 6, size=(height, 1, 1)).astype(np.float32)
  noise = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int8)
  image = np.clip((ramp + rows) + noise, 0, 255, dtype=np.float32)
  return Image.fromarray(image.astype(np.uint8))


def draw_image(rng: np.random.Generator, label: int, width: int, height: int) -> Image.Image:
  """One RGB image of class `label`: its shape over clutter, at a random place and size."""
  image = _background(rng, width, height)
  draw = ImageDraw.Draw(image)
  short = min(width, height)
  for _ in range(rng.integers(3, 8)):  # distractors: thin gray lines and outlines
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    dx, dy = rng.uniform(-0.3, 0.3, size=2) * short
    level = int(rng.uniform(40, 220))
    if rng.random() < 0.5:
      draw.line((x, y, x + dx, y + dy), fill=(level,) * 3, width=int(rng.integers(1, 4)))
    else:
      draw.ellipse((min(x, x + dx), min(y, y + dy), max(x, x + dx), max(y, y + dy)),
                   outline=(level,) * 3, width=2)
  spec = CLASSES[label]
  size = rng.uniform(0.3, 0.65) * short
  x0 = rng.uniform(0, width - size)
  y0 = rng.uniform(0, height - size)
  jitter = rng.integers(-25, 26, size=3)
  color = tuple(int(c) for c in np.clip(np.array(spec.color) + jitter, 0, 255))
  spec.draw(draw, (x0, y0, x0 + size, y0 + size), color, rng)
  return image


@functools.cache
def _photo() -> Image.Image:
  import matplotlib.cbook  # pylint: disable=import-outside-toplevel
  with Image.open(matplotlib.cbook.get_sample_data('grace_hopper.jpg')) as photo:
    return photo.convert('RGB')  # 512 x 600


def photo_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """A width x height RGB crop of a real photograph: random window, flip and colour cast."""
  photo = _photo()
  # The largest window of the output's aspect, scaled by 85..100% (at most ~1.2x
  # upscaling: as much detail as the photo has).
  side_w, side_h = photo.size
  window_w = min(side_w, side_h * width / height) * rng.uniform(0.85, 1.0)
  window_h = window_w * height / width
  x0, y0 = rng.uniform(0, side_w - window_w), rng.uniform(0, side_h - window_h)
  image = photo.resize((width, height), Image.BILINEAR,
                       box=(x0, y0, x0 + window_w, y0 + window_h))
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  cast = np.asarray(image, np.float32) * rng.uniform(0.75, 1.25, 3) + rng.uniform(-20, 20, 3)
  return Image.fromarray(np.clip(cast, 0, 255).astype(np.uint8))


def _encode(image: Image.Image, fmt: str = 'JPEG') -> bytes:
  buffer = io.BytesIO()
  if fmt == 'JPEG':
    image.save(buffer, fmt, quality=90)
  else:
    image.save(buffer, fmt)
  return buffer.getvalue()


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0  # same bytes for the same seed
  tar.addfile(info, io.BytesIO(data))


@dataclasses.dataclass(frozen=True)
class DemoSummary:
  """What was written, for callers and tests."""
  train_tar: str
  val_tar: str
  num_train_files: int                  # every file in the train tar, corrupt one included
  num_valid_train_images: int           # those a decoder can read
  num_val_images: int
  oddities: dict[str, str]              # kind -> file name ('cmyk', 'gray', 'png', 'small', 'corrupt')
  labels: dict[str, int]                # train file name -> index in CLASSES


def write_demo_imagenet(manual_dir: str, images_per_class: int = 100, seed: int = 0,
                        oddities: bool = True, image_size: tuple[int, int] = (300, 480),
                        val_images: int = 16, photos: bool = False) -> DemoSummary:
  """Writes ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into manual_dir.

  Args:
    manual_dir: created if missing; existing tars there are replaced.
    images_per_class: regular training images per class (8 classes).
    seed: the same seed writes the same bytes.
    oddities: add a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG, a 100x60 image and
      a corrupt file, each as an extra training image (the first four of classes 0..3,
      the corrupt one named as a class-4 image).
    image_size: (min, max) of each side in pixels; ImageNet's are mostly 300..500.
    val_images: images in the validation tar (the builder needs one; its labels are
      the builder's, by position, not these images' classes).
    photos: crops of a real photograph at 500x375 or 375x500 instead of drawn shapes
      (image_size is then unused): for benchmarks.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)
  low, high = image_size
  files: dict[str, list[tuple[str, bytes]]] = {c.synset: [] for c in CLASSES}
  labels = {}

  def random_image(label):
    if photos:
      return photo_image(rng, *((500, 375) if rng.random() < 0.75 else (375, 500)))
    width, height = (int(v) for v in rng.integers(low, high + 1, size=2))
    return draw_image(rng, label, width, height)

  for label, spec in enumerate(CLASSES):
    for i in range(1, images_per_class + 1):
      name = f'{spec.synset}_{i}.JPEG'
      files[spec.synset].append((name, _encode(random_image(label))))
      labels[name] = label

  odd = {}
  if oddities:
    extra = {
        'cmyk': (0, lambda: _encode(random_image(0).convert('CMYK'))),
        'gray': (1, lambda: _encode(random_image(1).convert('L'))),
        'png': (2, lambda: _encode(random_image(2), 'PNG')),
        'small': (3, lambda: _encode(draw_image(rng, 3, 100, 60))),
    }
    for kind, (label, make) in extra.items():
      synset = CLASSES[label].synset
      name = f'{synset}_{images_per_class + 1}.JPEG'
      files[synset].append((name, make()))
      labels[name] = label
      odd[kind] = name
    # Truncated JPEG with its header intact: looks like an image until decoded.
    synset = CLASSES[4].synset
    name = f'{synset}_{images_per_class + 1}.JPEG'
    whole = _encode(random_image(4))
    files[synset].append((name, whole[:len(whole) // 3]))
    odd['corrupt'] = name

  # Each tar is written under a temporary name and renamed when complete, val last, so an
  # interrupted run leaves no tar that looks finished.
  train_path = os.path.join(manual_dir, TRAIN_TAR)
  with tarfile.open(train_path + '.tmp', 'w') as outer:
    for synset, members in files.items():
      buffer = io.BytesIO()
      with tarfile.open(fileobj=buffer, mode='w') as inner:
        for name, data in members:
          _add_file(inner, name, data)
      _add_file(outer, f'{synset}.tar', buffer.getvalue())
  os.replace(train_path + '.tmp', train_path)

  val_path = os.path.join(manual_dir, VAL_TAR)
  with tarfile.open(val_path + '.tmp', 'w') as tar:
    for i in range(1, val_images + 1):
      _add_file(tar, VAL_FILE % i, _encode(random_image(int(rng.integers(len(CLASSES))))))
  os.replace(val_path + '.tmp', val_path)

  num_files = sum(len(m) for m in files.values())
  return DemoSummary(train_path, val_path, num_files,
                     num_files - (1 if oddities else 0), val_images, odd, labels)


if __name__ == '__main__':  # the command line this module had
  raise SystemExit('demo_data: writing the demo ImageNet is now a flag of the entry point: '
                   'python -m alexnet_jax.main --mode=prepare --demo_data --manual_dir=DIR '
                   '--data_dir=TFDS_DIR (then prepares it with TFDS too)')
