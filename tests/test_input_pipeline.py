"""The TFDS input pipeline: preparation, augmentation, exactly-once eval, determinism.

Tests of the stream (eval, determinism, resumption, processes) run on both inputs: the
full-size images cropped on the host (store='none') and the stores of squares.
"""

import ast
import dataclasses
import glob
import io
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import config as config_lib
from alexnet_jax.data import demo_data
from alexnet_jax.data import augment
from alexnet_jax.data import dataset
from alexnet_jax.data import input_pipeline as ip
from alexnet_jax.data import mean_image
from alexnet_jax import preprocess
from alexnet_jax import synthetic_data
from alexnet_jax.data import tfds_data
from tests import cli
from tests import stream
from tests.conftest_data import IMAGE_SIZE, TRAIN_EXAMPLES

R = config_lib.resize_size(IMAGE_SIZE)  # 27


def _image_shape(cfg, crops=None):
  """What one example's images are: (S, S, 3) crops (with crops: (C, S, S, 3)), or squares."""
  if cfg.store != 'none':
    return (R, R, 3)
  return ((crops,) if crops else ()) + (IMAGE_SIZE, IMAGE_SIZE, 3)


def _encode(array, fmt='PNG', **kwargs):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _file_names(demo, split):
  builder = tfds.builder('imagenet2012', data_dir=demo.data_dir)
  ds = builder.as_dataset(split, decoders={'image': tfds.decode.SkipDecoding()})
  return sorted(x['file_name'].decode() for x in ds.as_numpy_iterator())


def _tfds_label(demo, file_name):
  """The TFDS label (index among 1000 synsets) of a demo training file."""
  synset = demo_data.CLASSES[demo.summary.labels[file_name]].synset
  return tfds.builder('imagenet2012', data_dir=demo.data_dir).info.features['label'].str2int(synset)


def _mesh(data, tower):
  return jax.make_mesh((data, tower), ('data', 'tower'), devices=jax.devices()[:data * tower])


# ----------------------------------------------------------------------------------
# Preparation through the real imagenet2012 builder.


def test_preparation_keeps_odd_images_and_skips_the_corrupt_one(demo):
  odd = demo.summary.oddities
  assert demo.skipped == [odd['corrupt']]
  assert 'skipped 1 undecodable images' in demo.log and odd['corrupt'] in demo.log
  builder = tfds.builder('imagenet2012', data_dir=demo.data_dir)
  assert builder.info.splits['train'].num_examples == TRAIN_EXAMPLES
  stored = {x['file_name'].decode(): x for x in builder.as_dataset(
      'train', decoders={'image': tfds.decode.SkipDecoding()}).as_numpy_iterator()}
  assert odd['corrupt'] not in stored
  for kind in ('cmyk', 'gray', 'png', 'small'):
    example = stored[odd[kind]]
    assert example['label'] == _tfds_label(demo, odd[kind])
    with Image.open(io.BytesIO(example['image'])) as im:
      assert im.format == 'JPEG', kind  # decode_and_crop_jpeg can read every stored image
      assert im.mode == ('L' if kind == 'gray' else 'RGB'), kind
      if kind == 'small':
        assert im.size == (100, 60)
  # Every stored image goes through the training augmentation.
  cfg = demo.config(augment='paper')
  for name in odd.values():
    if name in stored:
      image = augment.train_image(tf.constant(stored[name]['image']), tf.constant([0, 1], tf.int64),
                              cfg, True).numpy()
      assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
  gray = augment.train_image(tf.constant(stored[odd['gray']]['image']),
                         tf.constant([0, 2], tf.int64), cfg, True).numpy()
  assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_sanitize_image_converts_cmyk_and_png_and_rejects_garbage():
  rgb = np.zeros((16, 24, 3), np.uint8)
  rgb[:] = (200, 30, 40)
  buffer = io.BytesIO()
  Image.fromarray(rgb).convert('CMYK').save(buffer, 'JPEG', quality=95)
  cmyk = buffer.getvalue()
  fixed = tfds_data.sanitize_image(cmyk)
  with Image.open(io.BytesIO(fixed)) as im:
    assert (im.format, im.mode) == ('JPEG', 'RGB')
    np.testing.assert_allclose(np.asarray(im)[8, 12], (200, 30, 40), atol=6)
  fixed = tfds_data.sanitize_image(_encode(rgb, 'PNG'))
  with Image.open(io.BytesIO(fixed)) as im:
    assert im.format == 'JPEG'
    np.testing.assert_allclose(np.asarray(im)[8, 12], (200, 30, 40), atol=6)
  gray = _encode(rgb[..., 0], 'JPEG')
  assert tfds_data.sanitize_image(gray) == gray  # untouched: decodes to 3 channels as it is
  good = _encode(rgb, 'JPEG')
  assert tfds_data.sanitize_image(good) == good
  assert tfds_data.sanitize_image(good[:len(good) // 2]) is None
  assert tfds_data.sanitize_image(b'not an image') is None


@pytest.mark.stderr
def test_a_broken_jpeg_is_rejected_without_tensorflow_logging_an_error(tmp_path):
  good = _encode(np.full((40, 60, 3), 90, np.uint8), 'JPEG')
  broken = tmp_path / 'broken.JPEG'
  broken.write_bytes(good[:len(good) // 3])  # the demo's corrupt file: header intact
  def run(code):
    return subprocess.run([sys.executable, '-c', code, str(broken)], cwd=cli.ROOT,
                          env=cli.environment(), capture_output=True, text=True, timeout=120)
  sanitized = run('import sys; from alexnet_jax.data import tfds_data; '
                  'print(tfds_data.sanitize_image(open(sys.argv[1], "rb").read()))')
  assert sanitized.stdout.strip() == 'None' and sanitized.stderr == ''
  # What the check spares: TF's own decoder logs an error line for such a file.
  decoded = run('import sys, tensorflow as tf\ntry: tf.io.decode_jpeg(open(sys.argv[1], "rb")'
                '.read(), ratio=8)\nexcept Exception: pass')
  assert 'JPEG' in decoded.stderr


def test_missing_tars_name_the_expected_files_before_any_work(tmp_path):
  data_dir, manual_dir = tmp_path / 'tfds', tmp_path / 'manual'
  manual_dir.mkdir()
  cfg = config_lib.DataConfig(data_dir=str(data_dir), manual_dir=str(manual_dir))
  with pytest.raises(tfds_data.MissingDataError) as error:
    dataset.prepare(cfg)
  message = str(error.value)
  assert os.path.join(str(manual_dir), 'ILSVRC2012_img_train.tar') in message
  assert os.path.join(str(manual_dir), 'ILSVRC2012_img_val.tar') in message
  assert not (data_dir / 'imagenet2012').exists()  # nothing was started
  (manual_dir / 'ILSVRC2012_img_train.tar').write_bytes(b'')
  with pytest.raises(tfds_data.MissingDataError, match=r'missing: ILSVRC2012_img_val\.tar'):
    dataset.prepare(cfg)
  with pytest.raises(tfds_data.MissingDataError, match='manual_dir'):
    dataset.prepare(dataclasses.replace(cfg, manual_dir=None))
  with pytest.raises(tfds_data.MissingDataError, match='prepare'):
    dataset.facts(cfg)


def test_dataset_info(demo):
  num_classes, num_train, num_eval, names = dataset.facts(demo.config())
  assert (num_classes, num_train, num_eval) == (1000, 90, 10)
  assert names[0] == 'n01440764' and len(names) == 1000


# ----------------------------------------------------------------------------------
# Augmentation against its definition, on images with known pixels.


def _known_square(size=R, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _find_crop(crop, square):
  """(y, x, flipped) of the exact crop of square, or None."""
  s = crop.shape[0]
  for y in range(square.shape[0] - s + 1):
    for x in range(square.shape[1] - s + 1):
      window = square[y:y + s, x:x + s]
      if np.array_equal(crop, window):
        return y, x, False
      if np.array_equal(crop, window[:, ::-1]):
        return y, x, True
  return None


def test_paper_crop_positions_and_flips_cover_their_range():
  square = _known_square()
  data = tf.constant(_encode(square))
  cfg = config_lib.DataConfig(image_size=IMAGE_SIZE)
  crop_fn = tf.function(lambda seed: augment.train_image(data, seed, cfg, False))
  found = [_find_crop(crop_fn(tf.constant([7, i], tf.int64)).numpy(), square) for i in range(300)]
  assert all(f is not None for f in found)  # every output is an exact S x S crop
  positions = {(y, x) for y, x, _ in found}
  assert positions == {(y, x) for y in range(R - IMAGE_SIZE + 1) for x in range(R - IMAGE_SIZE + 1)}
  flips = np.mean([f for _, _, f in found])
  assert 0.4 < flips < 0.6


def test_paper_crop_of_a_large_jpeg_maps_back_to_a_crop_of_the_resized_square():
  # A 3R x 4R JPEG whose red and green grow linearly with x and y: every output pixel
  # tells where in the source it was sampled, so a line fit recovers the crop's offset
  # in the R x R square (the shorter side resized to R, then cropped).
  height, width = 3 * R, 4 * R
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  image = np.stack([xx * 255 / width, yy * 255 / height, 0 * xx], -1).round().astype(np.uint8)
  data = tf.constant(_encode(image, 'JPEG', quality=98))
  cfg = config_lib.DataConfig(image_size=IMAGE_SIZE)
  scale, left = height / R, (width - height) // 2  # source pixels per square pixel
  crop_fn = tf.function(lambda seed: augment.train_image(data, seed, cfg, True))
  offsets, flips = [], []
  for i in range(40):
    crop = crop_fn(tf.constant([1, i], tf.int64)).numpy().astype(np.float64)
    source_x = crop[..., 0].mean(axis=0) * width / 255   # per output column
    source_y = crop[..., 1].mean(axis=1) * height / 255  # per output row
    flipped = source_x[-1] < source_x[0]
    if flipped:
      source_x = source_x[::-1]
    steps = np.arange(IMAGE_SIZE)
    (slope_x, x0), (slope_y, y0) = np.polyfit(steps, source_x, 1), np.polyfit(steps, source_y, 1)
    np.testing.assert_allclose([slope_x, slope_y], [scale, scale], rtol=0.05)
    # Output pixel i of a crop at offset o samples the source at left + (o + i + 0.5)
    # * scale - 0.5 (half-pixel centres, as tf.image.resize).
    offsets.append(((x0 - left + 0.5) / scale - 0.5, (y0 + 0.5) / scale - 0.5))
    flips.append(flipped)
  offsets = np.array(offsets)
  # Whole-pixel offsets spanning exactly 0 .. R - S, to within the window's rounding to
  # whole pixels of the decoded JPEG (here decoded at 1/2 scale: 1/3 of a square pixel).
  assert np.abs(offsets - offsets.round()).max() < 0.4
  assert offsets.round().min() == 0 and offsets.round().max() == R - IMAGE_SIZE
  assert 0.25 < np.mean(flips) < 0.75


def test_no_augmentation_is_the_centre_crop():
  square = _known_square()
  cfg = config_lib.DataConfig(image_size=IMAGE_SIZE, augment='none')
  crop = augment.train_image(tf.constant(_encode(square)), tf.constant([0, 0], tf.int64), cfg, False)
  mid = (R - IMAGE_SIZE) // 2
  np.testing.assert_array_equal(crop, square[mid:mid + IMAGE_SIZE, mid:mid + IMAGE_SIZE])


def test_inception_crop_area_and_aspect_ranges():
  # Pixels encode their own coordinates, so each output shows which window it came from.
  size = 250
  yy, xx = np.mgrid[0:size, 0:size]
  image = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
  data = tf.constant(_encode(image))
  cfg = config_lib.DataConfig(image_size=IMAGE_SIZE, augment='inception')
  crop_fn = tf.function(lambda seed: augment.train_image(data, seed, cfg, False))
  areas, aspects, flips = [], [], []
  for i in range(100):
    crop = crop_fn(tf.constant([3, i], tf.int64)).numpy().astype(np.float64)
    assert crop.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    flipped = crop[0, 0, 0] > crop[0, -1, 0]
    columns = np.sort(crop[0, [0, -1], 0])
    rows = crop[[0, -1], 0, 1]
    scale = IMAGE_SIZE / (IMAGE_SIZE - 1)  # outer pixel centres to window edges
    width = (columns[1] - columns[0]) * scale
    height = (rows[1] - rows[0]) * scale
    areas.append(width * height / size**2)
    aspects.append(width / height)
    flips.append(flipped)
  assert 0.08 * 0.9 <= min(areas) and max(areas) <= 1.0 + 0.02
  assert min(areas) < 0.3 and max(areas) > 0.7  # the range is used, not a fixed crop
  assert 0.75 * 0.9 <= min(aspects) and max(aspects) <= 4 / 3 * 1.1
  assert 0.3 < np.mean(flips) < 0.7


def test_ten_crops_are_the_corners_centre_and_mirrors():
  square = _known_square(seed=3)
  cfg = config_lib.DataConfig(image_size=IMAGE_SIZE, eval_crops=10)
  crops = augment.eval_images(tf.constant(_encode(square)), cfg, False).numpy()
  s, far, mid = IMAGE_SIZE, R - IMAGE_SIZE, (R - IMAGE_SIZE) // 2
  expected = [square[:s, :s], square[:s, far:], square[far:, :s], square[far:, far:],
              square[mid:mid + s, mid:mid + s]]
  expected += [e[:, ::-1] for e in expected]
  assert crops.shape == (10, s, s, 3) and crops.dtype == np.uint8
  np.testing.assert_array_equal(crops, np.stack(expected))
  one = augment.eval_images(tf.constant(_encode(square)), dataclasses.replace(cfg, eval_crops=1),
                        False).numpy()
  np.testing.assert_array_equal(one, np.stack(expected[4:5]))


def test_ten_crops_of_a_larger_image_come_from_its_resized_central_square():
  image = _known_square(size=2 * R, seed=4)
  wide = np.concatenate([image, image[:, :R]], axis=1)  # 2R x 3R: the square is the middle
  cfg = config_lib.DataConfig(image_size=IMAGE_SIZE, eval_crops=10)
  crops = augment.eval_images(tf.constant(_encode(wide)), cfg, False).numpy()
  centre = wide[:, R // 2:R // 2 + 2 * R]
  square = np.floor(tf.image.resize(centre[None], [R, R]).numpy()[0] + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(crops[0], square[:IMAGE_SIZE, :IMAGE_SIZE])
  np.testing.assert_array_equal(crops[8], square[R - IMAGE_SIZE:, R - IMAGE_SIZE:][:, ::-1])


# ----------------------------------------------------------------------------------
# Evaluation: every example exactly once.


@pytest.mark.parametrize('split,batch,processes,store', [
    ('train[90%:]', 3, 1, 'none'), ('train[90%:]', 4, 2, 'none'), ('train[90%:]', 7, 2, 'none'),
    ('train', 16, 2, 'none'), ('train[90%:]', 4, 3, 'jpeg'), ('train', 16, 2, 'jpeg'),
    ('train[90%:]', 7, 2, 'raw'),
])
def test_every_eval_example_counted_once(demo, split, batch, processes, store):
  cfg = demo.config(eval_split=split, store=store)
  expected = _file_names(demo, split)
  seen, steps = [], []
  for index in range(processes):
    batches = list(ip.eval_dataset(cfg, batch, process_index=index, process_count=processes,
                                   keep_file_name=True).as_numpy_iterator())
    steps.append(len(batches))
    for b in batches:
      assert b['images'].shape == (batch,) + _image_shape(cfg, crops=1)
      assert b['images'].dtype == np.uint8 and b['labels'].dtype == np.int32
      seen += [n.decode() for n, m in zip(b['file_name'], b['mask']) if m]
      assert not b['file_name'][~b['mask']].any()  # padding is blank
  assert sorted(seen) == expected  # each once, none dropped
  assert len(set(steps)) == 1 and steps[0] == ip.eval_steps(cfg, batch, processes)


@pytest.mark.parametrize('store', ['none', 'jpeg'])
def test_eval_batches_are_global_arrays_with_masks(demo, store):
  mesh = _mesh(4, 2)
  cfg = demo.config(eval_crops=10, store=store)
  batches = list(ip.eval_batches(cfg, 8, mesh))
  assert len(batches) == 2  # 10 examples, batch 8: one padded batch, nothing dropped
  for b in batches:
    assert b['images'].shape == (8,) + _image_shape(cfg, crops=10)
    assert b['images'].sharding.spec == jax.P('data')
    assert b['mask'].dtype == np.bool_ and b['labels'].dtype == np.int32
  assert sum(int(b['mask'].sum()) for b in batches) == 10
  labels = np.concatenate([np.asarray(b['labels'])[np.asarray(b['mask'])] for b in batches])
  names = _file_names(demo, 'train[90%:]')
  assert sorted(labels) == sorted(_tfds_label(demo, n) for n in names)


# ----------------------------------------------------------------------------------
# Training stream: determinism, resumption, global arrays.


def _take(batches, n):
  return [b for _, b in zip(range(n), batches)]


@pytest.mark.parametrize('store', ['none', 'raw'])
def test_same_seed_same_batches_other_seed_other_batches(demo, store):
  cfg = demo.config(store=store)
  a, b = _take(ip.host_batches(cfg, 16), 3), _take(ip.host_batches(cfg, 16), 3)
  c = _take(ip.host_batches(dataclasses.replace(cfg, seed=1), 16), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['images'], y['images'])
    np.testing.assert_array_equal(x['labels'], y['labels'])
  assert not np.array_equal(a[0]['images'], c[0]['images'])


@pytest.mark.parametrize('store', ['none', 'jpeg', 'raw'])
def test_resuming_at_step_n_matches_the_uninterrupted_run(demo, store):
  # 90 examples, batch 16: epochs end inside steps 5 and 11, so resuming at 4, 5 and 7
  # covers mid-epoch, a step that spans two epochs, and the second epoch.
  cfg = demo.config(store=store)
  whole = _take(ip.host_batches(cfg, 16), 12)
  labels = np.concatenate([b['labels'] for b in whole])  # 192 = two epochs and a bit
  for epoch in range(2):  # each epoch is a permutation of the split
    per_epoch = labels[epoch * 90:(epoch + 1) * 90]
    assert sorted(per_epoch) == sorted(labels[:90])
  assert not np.array_equal(labels[:90], labels[90:180])  # reshuffled
  for start in (4, 5, 7):
    resumed = _take(ip.host_batches(cfg, 16, start_position=16 * start), 12 - start)
    for step, batch in enumerate(resumed, start):
      np.testing.assert_array_equal(batch['images'], whole[step]['images'], err_msg=f'{step}')
      np.testing.assert_array_equal(batch['labels'], whole[step]['labels'])


def test_step_n_holds_stream_positions_n_times_batch_of_the_file_order(demo):
  # In the known order the stream is the split's file, epoch after epoch (tests/stream.py):
  # an expectation that shares nothing with the pipeline. 90 examples, batch 16: step 5
  # spans two epochs.
  cfg = demo.config(**stream.KNOWN_ORDER)
  for start in (0, 5):
    for step, batch in enumerate(_take(ip.host_batches(cfg, 16, start_position=16 * start), 2), start):
      images, labels = stream.train_batch(cfg, step, 16)
      np.testing.assert_array_equal(batch['labels'], labels, err_msg=f'step {step}')
      np.testing.assert_array_equal(batch['images'], images, err_msg=f'step {step}')


@pytest.mark.parametrize('store', ['none', 'jpeg', 'raw'])
def test_processes_read_disjoint_parts(demo, store):
  cfg = demo.config(store=store)
  epochs = []
  for index in range(2):
    batches = _take(ip.host_batches(cfg, 5, process_index=index, process_count=2), 9)
    epochs.append(np.concatenate([b['images'] for b in batches]))  # 45 = one epoch each
  # The two processes' images are different examples (no shared crops of one image).
  flat = [e.reshape(45, -1).astype(np.float32) for e in epochs]
  distances = np.abs(flat[0][:, None] - flat[1][None]).mean(-1)
  assert distances.min() > 5


def test_train_batches_are_sharded_uint8_global_arrays(demo):
  mesh = _mesh(4, 2)
  cfg = demo.config(**stream.KNOWN_ORDER)
  batches = ip.train_batches(cfg, 16, mesh, start_examples=32)
  first = next(batches)
  assert first['images'].shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert first['images'].dtype == np.uint8 and first['labels'].dtype == np.int32
  assert first['images'].sharding == jax.NamedSharding(mesh, jax.P('data'))
  assert len(first['images'].addressable_shards) == 8
  images, labels = stream.train_batch(cfg, 2, 16)  # positions 32..47 of the file
  np.testing.assert_array_equal(np.asarray(first['images']), images)
  np.testing.assert_array_equal(np.asarray(first['labels']), labels)
  # A batch the data axis cannot split is refused once, before any pipeline is built.
  experiment = config_lib.Experiment.from_parts(
      model=config_lib.ModelConfig(), data=cfg, optimizer=config_lib.OptimizerConfig(),
      train=config_lib.TrainConfig(batch_size=6), mesh=config_lib.MeshConfig(),
      processes=config_lib.ProcessConfig(), run=config_lib.RunConfig(mode='summary'),
      benchmark=config_lib.BenchmarkConfig(), visualize=config_lib.VisualizeConfig())
  with pytest.raises(config_lib.UserError, match='multiple of the data axis'):
    experiment.mesh_shape(mesh.size)


@pytest.mark.parametrize('store', ['jpeg', 'raw'])
def test_train_batches_of_the_store_are_its_squares_as_sharded_global_arrays(demo, store):
  mesh = _mesh(4, 2)
  cfg = demo.config(store=store)
  first = next(ip.train_batches(cfg, 16, mesh, start_examples=32))
  assert first['images'].shape == (16, R, R, 3) and first['images'].dtype == np.uint8
  assert first['images'].sharding == jax.NamedSharding(mesh, jax.P('data'))
  expected = _take(ip.host_batches(cfg, 16, start_position=32), 1)[0]
  np.testing.assert_array_equal(np.asarray(first['images']), expected['images'])
  np.testing.assert_array_equal(np.asarray(first['labels']), expected['labels'])


def test_prefetch_keeps_order_and_items():
  assert list(ip.prefetch(iter(range(5)), 2)) == [0, 1, 2, 3, 4]
  assert list(ip.prefetch(iter([]), 2)) == []


# ----------------------------------------------------------------------------------
# Means and prediction inputs.


def test_mean_for_channel_and_pixel(demo, tmp_path):
  np.testing.assert_array_equal(mean_image.mean_for(demo.config()), preprocess.CHANNEL_MEAN)
  cfg = demo.config(mean='pixel', store='none')
  mean = mean_image.mean_for(cfg, workdir=str(tmp_path))
  assert mean.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and mean.dtype == np.float32
  stored = np.load(mean_image.cached_path(cfg, str(tmp_path)))
  assert stored.shape == (R, R, 3)
  # The mean of the 90 training squares, computed here the long way.
  squares = [augment.central_square(tf.constant(x['image']), R).numpy()
             for x in tfds.builder('imagenet2012', data_dir=demo.data_dir).as_dataset(
                 'train[:90%]', decoders={'image': tfds.decode.SkipDecoding()})
             .as_numpy_iterator()]
  np.testing.assert_allclose(stored, np.mean(squares, axis=0), atol=1e-3)
  mid = (R - IMAGE_SIZE) // 2
  np.testing.assert_array_equal(mean, stored[mid:mid + IMAGE_SIZE, mid:mid + IMAGE_SIZE])
  np.save(mean_image.cached_path(cfg, str(tmp_path)), np.zeros((R, R, 3), np.float32))
  assert not mean_image.mean_for(cfg, workdir=str(tmp_path)).any()  # read back, not recomputed
  # A torn or wrong file is a cache gone bad: computed again, and kept again.
  path = mean_image.cached_path(cfg, str(tmp_path))
  for damage in (lambda: os.truncate(path, 100), lambda: np.save(path, np.zeros((R, R)))):
    damage()
    np.testing.assert_array_equal(mean_image.mean_for(cfg, workdir=str(tmp_path)), mean)
    np.testing.assert_array_equal(np.load(path), stored)
  other = dataclasses.replace(cfg, train_split='train[90%:]')
  assert mean_image.cached_path(other, 'w') != mean_image.cached_path(cfg, 'w')
  paths = {mean_image.cached_path(dataclasses.replace(cfg, store=store, store_quality=quality), 'w')
           for store, quality in (('none', 90), ('raw', 90), ('jpeg', 90), ('jpeg', 80))}
  assert len(paths) == 4  # each input's squares have their own mean


def test_load_images_for_predict(tmp_path):
  square = _known_square(seed=9)
  png_named_jpeg = tmp_path / 'a.jpg'
  png_named_jpeg.write_bytes(_encode(square))
  jpeg = tmp_path / 'b.jpeg'
  jpeg.write_bytes(_encode(square, 'JPEG', quality=100, subsampling=0))
  cfg = config_lib.DataConfig(image_size=IMAGE_SIZE, eval_crops=10, store='none')
  crops = ip.load_images_for_predict([str(png_named_jpeg), str(jpeg)], cfg)
  assert crops.shape == (2, 10, IMAGE_SIZE, IMAGE_SIZE, 3) and crops.dtype == np.uint8
  np.testing.assert_array_equal(crops[0, 0], square[:IMAGE_SIZE, :IMAGE_SIZE])
  assert np.abs(crops[1].astype(int) - crops[0]).mean() < 1.5  # JPEG at quality 100
  # With the store, the squares, which the device crops as in evaluation.
  squares = ip.load_images_for_predict([str(png_named_jpeg)],
                                       dataclasses.replace(cfg, store='jpeg'))
  np.testing.assert_array_equal(squares, square[None])
  text = tmp_path / 'notes.jpg'
  text.write_text('not an image')
  with pytest.raises(config_lib.UserError, match='notes.jpg'):
    ip.load_images_for_predict([str(text)], cfg)
  with pytest.raises(config_lib.UserError, match='missing.png'):
    ip.load_images_for_predict([str(tmp_path / 'missing.png')], cfg)


# ----------------------------------------------------------------------------------
# No TensorFlow on the accelerator side.


def _modules_loaded_by(imports: str) -> list[str]:
  """The top-level packages in sys.modules after `imports` runs in a fresh interpreter."""
  code = f'import sys\n{imports}\nprint(" ".join(sorted({{m.split(".")[0] for m in sys.modules}})))'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=root), cwd=root, timeout=120)
  assert result.returncode == 0, result.stderr
  return result.stdout.split()


def test_only_the_modules_that_read_data_load_tensorflow():
  """TensorFlow takes seconds to load, and the GPU machines' synthetic runs have none: the
  entry point, the config, the library and the tools that read no dataset load none of it
  (main imports data/ in the handlers of the modes that read data)."""
  import alexnet_jax  # pylint: disable=import-outside-toplevel
  package = os.path.dirname(alexnet_jax.__file__)
  readers = {'alexnet_jax.tools.visualize', 'alexnet_jax.tools.input_benchmark'}
  outside = sorted(
      'alexnet_jax.' + os.path.relpath(path, package)[:-3].replace(os.sep, '.')
      for path in glob.glob(os.path.join(package, '**', '*.py'), recursive=True)
      if not os.path.relpath(path, package).startswith('data' + os.sep)
      and not path.endswith('__init__.py'))
  assert readers < set(outside) and {'alexnet_jax.main', 'alexnet_jax.train'} < set(outside)
  loaded = _modules_loaded_by('\n'.join(f'import {name}' for name in outside if name not in readers)
                              + '\nimport alexnet_jax.data.demo_data')
  tensorflow = {'tensorflow', 'tensorflow_datasets', 'tf_keras', 'keras'}
  assert not tensorflow & set(loaded), sorted(tensorflow & set(loaded))
  for reader in sorted(readers):
    assert 'tensorflow' in _modules_loaded_by(f'import {reader}')


@pytest.mark.stderr
def test_tensorflow_is_imported_in_one_place_and_every_other_module_takes_it_from_there():
  """alexnet_jax/data/tensorflow_setup.py imports it quietly and sets it up; a module that
  imported TensorFlow itself first would print its start-up lines (tensorflow_setup.py)."""
  import alexnet_jax  # pylint: disable=import-outside-toplevel
  package = os.path.dirname(alexnet_jax.__file__)
  on_its_own = []
  for path in glob.glob(os.path.join(package, '**', '*.py'), recursive=True):
    with open(path) as f:
      tree = ast.parse(f.read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    tensorflow = {name for name in imported if name.split('.')[0] in ('tensorflow',
                                                                        'tensorflow_datasets')}
    set_up = any(isinstance(node, ast.ImportFrom)
                 and node.module == 'alexnet_jax.data.tensorflow_setup' for node in tree.body)
    if tensorflow and not set_up and not path.endswith('tensorflow_setup.py'):
      on_its_own.append(os.path.relpath(path, package))
  assert not on_its_own, on_its_own
  code = 'import sys; from alexnet_jax.data.tensorflow_setup import tf; print("quiet", file=sys.stderr)'
  for onednn in ('0', '1'):
    result = subprocess.run([sys.executable, '-c', code], cwd=cli.ROOT, capture_output=True,
                            text=True, timeout=120,
                            env=cli.environment(TF_ENABLE_ONEDNN_OPTS=onednn,
                                                TF_CPP_MIN_LOG_LEVEL='0'))
    assert result.returncode == 0 and result.stderr == 'quiet\n', result.stderr


def test_the_config_and_its_flags_load_neither_orbax_nor_tensorflow():
  loaded = set(_modules_loaded_by('import alexnet_jax.config, alexnet_jax.flags'))
  assert not loaded & {'orbax', 'tensorflow', 'tensorflow_datasets', 'flax', 'optax'}, loaded
  assert 'absl' in loaded


def test_synthetic_batches_are_device_resident_uint8():
  mesh = _mesh(2, 2)
  batches = synthetic_data.synthetic_batches(8, 16, 10, mesh, seed=0)
  a, b, c = next(batches), next(batches), next(batches)
  assert a['images'].shape == (8, 16, 16, 3) and a['images'].dtype == np.uint8
  assert a['labels'].dtype == np.int32 and 0 <= int(a['labels'].min()) <= int(a['labels'].max()) < 10
  assert a['images'].sharding == jax.NamedSharding(mesh, jax.P('data'))
  assert not np.array_equal(a['images'], b['images'])
  assert c['images'] is a['images']  # cycled, not regenerated
