"""The paper's augmentation and evaluation crops, as tf.data graph code on one example.

S = image_size, R = resize_size(S): 256 for S in 224..256, else round(S * 256 / 224).
  train 'paper':     the paper's "shorter side to R, central R x R, random S x S crop,
                     random horizontal flip". Only the crop's window of the JPEG is
                     decoded and resized straight to S x S: the same pixels as resizing
                     the whole square and cropping, up to rounding the window to whole
                     decoded pixels (< 1/2 source pixel), for ~20% less work.
  train 'inception': a random-area crop (8%..100% of the image, aspect 3/4..4/3, as
                     tf.image.sample_distorted_bounding_box), decoded alone, resized to S,
                     random flip.
  train 'none':      the centre crop.
  eval:              the R x R square, then 1 crop (centre) or the paper's 10 (corners and
                     centre, then the same five mirrored).
JPEGs whose square is >= 2R (4R, 8R) are decoded at 1/2 (1/4, 1/8) scale by libjpeg.
Resizing is bilinear (half-pixel centres, as tf.image.resize), rounded to uint8. Every
random choice is a stateless op of the seed it is given.
"""

from __future__ import annotations


from alexnet_jax.config import DataConfig
from alexnet_jax.data.tensorflow_setup import tf

# Decode the JPEG at 1/r of its size (libjpeg's DCT scaling, nearly free) when the square
# is at least r times the size it is resized to: small nets read large images cheaply.
JPEG_RATIOS = (1, 2, 4, 8)
# TF's default IDCT is INTEGER_FAST: seen here up to ~9 grey levels off on noisy
# quality-100 JPEGs, at the same speed as the accurate one.
DCT_METHOD = 'INTEGER_ACCURATE'


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds bilinear output (a convex mix of uint8 values, so within 0..255) to uint8.

  One add and one cast: round + saturate_cast cost ~15% of the whole pipeline here.
  """
  return tf.cast(image + 0.5, tf.uint8)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear to size x size, float32."""
  image = tf.image.resize(image[None], [size, size], method='bilinear')[0]
  return tf.ensure_shape(image, [size, size, 3])


def _decode(data, window_fn, is_jpeg: bool, square_at_least: int | None = None) -> tf.Tensor:
  """Decodes only the window window_fn([height, width]) = [y, x, h, w] of an image.

  JPEGs are decoded at the smallest scale 1/r (libjpeg's DCT scaling, r in 1, 2, 4, 8)
  whose shorter side is still >= square_at_least, and window_fn gets the scaled
  shape: a small net reads large images at a fraction of the cost. Other formats are
  decoded whole and sliced.
  """
  if not is_jpeg:
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method=DCT_METHOD),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    y, x, h, w = tf.unstack(window_fn(tf.shape(image)[:2]))
    return image[y:y + h, x:x + w]
  shape = tf.image.extract_jpeg_shape(data)[:2]
  index = tf.constant(0)
  if square_at_least:
    index = tf.reduce_sum(tf.cast(
        tf.reduce_min(shape) // tf.constant(JPEG_RATIOS[1:]) >= square_at_least, tf.int32))
  ratio = tf.gather(tf.constant(JPEG_RATIOS), index)
  window = window_fn((shape + ratio - 1) // ratio)  # libjpeg rounds scaled sizes up

  def at(r):
    return lambda: tf.image.decode_and_crop_jpeg(data, window, channels=3, ratio=r,
                                                 dct_method=DCT_METHOD)

  return tf.switch_case(index, [at(r) for r in JPEG_RATIOS])


def _square(shape) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(y, x, side) of the central square of an image of this [height, width]."""
  side = tf.reduce_min(shape)
  return (shape[0] - side) // 2, (shape[1] - side) // 2, side


def central_square(data, size: int, is_jpeg: bool = True) -> tf.Tensor:
  """Shorter side resized to `size`, central size x size square: uint8 (size, size, 3)."""
  def window(shape):
    y, x, side = _square(shape)
    return tf.stack([y, x, side, side])
  return to_uint8(_resize(_decode(data, window, is_jpeg, size), size))


def _flip(image, seed) -> tf.Tensor:
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _square_crop(data, offset, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """The S x S crop at `offset` = (y, x) of the R x R square, float32.

  Decodes and resizes only the crop's window of the original (R-square units mapped
  back to source pixels, rounded to whole pixels), not the whole square: the same
  pixels as resize-then-crop up to that rounding, for ~20% less work. When the
  square's side equals R it is exactly a slice.
  """
  size, out = cfg.resize_size, cfg.image_size

  def window(shape):
    y, x, side = _square(shape)
    scale = tf.cast(side, tf.float32) / size
    crop = tf.clip_by_value(tf.cast(tf.round(out * scale), tf.int32), 1, side)
    dy, dx = tf.unstack(tf.cast(tf.round(tf.cast(offset, tf.float32) * scale), tf.int32))
    return tf.stack([y + tf.minimum(dy, side - crop), x + tf.minimum(dx, side - crop), crop, crop])

  return _resize(_decode(data, window, is_jpeg, size), out)


def _paper_crop(data, seed, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """A random S x S crop of the R x R square (any of (R-S+1)^2 positions), random flip."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  offset = tf.random.stateless_uniform([2], crop_seed, 0, cfg.resize_size - cfg.image_size + 1,
                                       tf.int32)
  return _flip(to_uint8(_square_crop(data, offset, cfg, is_jpeg)), flip_seed)


def _inception_crop(data, seed, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """Random area 8%..100%, aspect 3/4..4/3, resized to S x S, random flip."""
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  def window(shape):
    begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), box_seed,
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], box[0], box[1]])

  crop = _resize(_decode(data, window, is_jpeg), cfg.image_size)
  return _flip(to_uint8(crop), flip_seed)


def eval_crops(square: tf.Tensor, image_size: int, crops: int) -> tf.Tensor:
  """(C, S, S, 3) crops of an R x R square: C=1 the centre; C=10 the paper's ten.

  Order for 10: top-left, top-right, bottom-left, bottom-right, centre, then the same
  five mirrored left-right. The centre is at ((R-S)//2, (R-S)//2).
  """
  size = square.shape[0]
  far, mid = size - image_size, (size - image_size) // 2
  corners = [(mid, mid)] if crops == 1 else [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  views = [square[y:y + image_size, x:x + image_size] for y, x in corners]
  if crops == 10:
    views += [tf.reverse(v, axis=[1]) for v in views]
  return tf.stack(views)


def train_image(data, seed, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """uint8 (S, S, 3): one training view of an encoded image under cfg.augment."""
  if cfg.augment == 'paper':
    return _paper_crop(data, seed, cfg, is_jpeg)
  if cfg.augment == 'inception':
    return _inception_crop(data, seed, cfg, is_jpeg)
  centre = tf.fill([2], (cfg.resize_size - cfg.image_size) // 2)
  return to_uint8(_square_crop(data, centre, cfg, is_jpeg))


def eval_images(data, cfg: DataConfig, is_jpeg: bool) -> tf.Tensor:
  """uint8 (C, S, S, 3): the eval crops of an encoded image."""
  square = central_square(data, cfg.resize_size, is_jpeg)
  return eval_crops(square, cfg.image_size, cfg.eval_crops)
