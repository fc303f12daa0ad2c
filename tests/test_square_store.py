"""The store of R x R squares: what it holds, its mean images, its errors, and the device's
crops of its squares against the host's."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import weakref

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import config as config_lib
from alexnet_jax import device_augment
from alexnet_jax.data import augment
from alexnet_jax.data import dataset
from alexnet_jax.data import input_pipeline as ip
from alexnet_jax.data import mean_image
from alexnet_jax.data import square_store
from tests import cli
from tests import meshes
from tests.conftest_data import IMAGE_SIZE

S = IMAGE_SIZE
R = config_lib.resize_size(S)  # 27


def _examples(builder, split):
  """{file_name: (encoded image bytes, label)} of a split, read back from disk."""
  ds = builder.as_dataset(split, decoders={'image': tfds.decode.SkipDecoding()})
  return {x['file_name'].decode(): (x['image'], int(x['label'])) for x in ds.as_numpy_iterator()}


def _host_square(data):
  """The central R x R square of a full-size image, as the host's full-size path makes it."""
  return augment.central_square(tf.constant(data), R).numpy()


def _stored_square(data, store):
  if store == 'raw':
    return np.frombuffer(data, np.uint8).reshape(R, R, 3)
  return tf.io.decode_jpeg(data, channels=3, dct_method=augment.DCT_METHOD).numpy()


def _window(square, offset, flip):
  y, x = offset
  window = square[y:y + S, x:x + S]
  return window[:, ::-1] if flip else window


@pytest.fixture(scope='module')
def source(demo):
  return tfds.builder('imagenet2012', data_dir=demo.data_dir)


def _copy_source(demo, root) -> str:
  """A data dir holding only the prepared source dataset (no store yet)."""
  data_dir = os.path.join(root, 'tfds')
  shutil.copytree(os.path.join(demo.data_dir, 'imagenet2012'),
                  os.path.join(data_dir, 'imagenet2012'))
  return data_dir


# ----------------------------------------------------------------------------------
# What the store holds.


@pytest.mark.parametrize('store', ['raw', 'jpeg'])
def test_the_store_holds_the_central_squares_with_labels_and_file_names(demo, source, store):
  builder = square_store.open_store(demo.config(store=store))
  assert sorted(builder.info.splits) == sorted(source.info.splits)
  assert builder.info.features['label'].names == source.info.features['label'].names
  for split in source.info.splits:
    stored, full = _examples(builder, split), _examples(source, split)
    assert sorted(stored) == sorted(full)  # every example, with its file name
    for name, (data, label) in stored.items():
      assert label == full[name][1]
      square, expected = _stored_square(data, store), _host_square(full[name][0])
      assert square.shape == (R, R, 3)
      if store == 'raw':
        np.testing.assert_array_equal(square, expected)  # exactly the host's square
      else:  # the host's square as a quality-90 JPEG
        assert data == tf.io.encode_jpeg(expected, quality=90, optimize_size=True).numpy()
  # The source's order: a slice of a split holds the same examples in both.
  assert sorted(_examples(builder, 'train[90%:]')) == sorted(_examples(source, 'train[90%:]'))
  odd = demo.summary.oddities  # CMYK, grayscale, PNG and tiny images went through
  assert {odd[k] for k in ('cmyk', 'gray', 'png', 'small')} <= set(_examples(builder, 'train'))
  gray = _stored_square(_examples(builder, 'train')[odd['gray']][0], store).astype(int)
  assert np.abs(gray[..., 0] - gray[..., 2]).max() <= (0 if store == 'raw' else 2)


def test_the_store_has_the_mean_image_of_each_split(demo, source):
  cfg = demo.config(store='raw', mean='pixel', train_split='train')
  squares = [_host_square(data) for data, _ in _examples(source, 'train').values()]
  mean = mean_image.mean_for(cfg)
  assert mean.shape == (R, R, 3) and mean.dtype == np.float32  # R x R: cropped on the device
  np.testing.assert_allclose(mean, np.mean(squares, axis=0), atol=1e-3)
  facts = square_store.read_facts(cfg)
  assert facts['images'] == sum(s.num_examples for s in source.info.splits.values())
  assert (facts['source'], facts['resize_size'], facts['encoding']) == ('imagenet2012', R, 'raw')
  assert facts['bytes'] > facts['images'] * R * R * 3 and facts['cpu_seconds'] > 0
  # A part of a split: computed from the store's squares, once, into the workdir.
  part_cfg = dataclasses.replace(cfg, train_split='train[:90%]')
  part = mean_image.mean_for(part_cfg, workdir=str(demo.data_dir))
  head = [_stored_square(data, 'raw') for data, _ in
          _examples(square_store.open_store(cfg), 'train[:90%]').values()]
  np.testing.assert_allclose(part, np.mean(head, axis=0), atol=1e-3)
  assert os.path.exists(mean_image.cached_path(part_cfg, str(demo.data_dir)))


@pytest.mark.parametrize('store', ['raw', 'jpeg'])
def test_the_reader_reads_every_stored_square_with_its_label_once_an_epoch(demo, store):
  cfg = demo.config(store=store, train_split='train')
  # For JPEG, the squares TF's decoder makes of the stored JPEGs: the reader's are the same.
  label_of = {_stored_square(data, store).tobytes(): label for data, label in
              _examples(square_store.open_store(cfg), 'train').values()}
  batches = [b for _, b in zip(range(8), ip.host_batches(cfg, 25))]  # 200: two epochs
  for epoch in (batches[:4], batches[4:]):
    seen = [(image.tobytes(), label) for b in epoch for image, label in zip(b['images'], b['labels'])]
    assert sorted(seen) == sorted(label_of.items())  # each square once, with its label
  assert [b['images'][0].tobytes() for b in batches[:4]] != [b['images'][0].tobytes()
                                                             for b in batches[4:]]
  # 64-byte aligned: JAX takes it on the CPU without a copy.
  assert all(b['images'].ctypes.data % 64 == 0 for b in batches)


def test_the_reader_overwrites_a_batch_only_once_nothing_refers_to_it(demo):
  batches = ip.host_batches(demo.config(store='raw', train_split='train'), 25)
  kept = next(batches)['images']
  view = next(batches)['images'][3:5]
  on_device = jax.device_put(next(batches)['images'])  # on the CPU it may alias the batch
  held = [kept, view, on_device]
  before = [np.array(x) for x in held]
  held_at = {np.asarray(x).ctypes.data for x in (kept, view[0], on_device)}
  handed_out, buffers = [], []
  for _ in range(12):  # each dropped when the next arrives
    images = next(batches)['images']
    handed_out.append(images.ctypes.data)
    buffers.append(weakref.ref(images.base))
  for x, expected in zip(held, before):
    np.testing.assert_array_equal(np.asarray(x), expected)
  assert not held_at & set(handed_out)
  # The dropped batches' buffers live on, to be used again: two take turns.
  assert all(b() is not None for b in buffers) and len({id(b()) for b in buffers}) == 2


# ----------------------------------------------------------------------------------
# The device's crops of the stored squares against the host's.


@pytest.mark.parametrize('store', ['raw', 'jpeg'])
def test_device_crops_of_stored_squares_equal_the_host_crops_of_the_same_windows(
    demo, source, store):
  cfg = demo.config(store=store, eval_split='train')
  batch = next(ip.eval_dataset(cfg, 32, keep_file_name=True).as_numpy_iterator())
  names = [n.decode() for n in batch['file_name']]
  # The host's squares: for raw, the full-size path's own; for JPEG, the stored JPEG decoded.
  full, stored = _examples(source, 'train'), _examples(square_store.open_store(cfg), 'train')
  host = np.stack([_host_square(full[n][0]) if store == 'raw'
                   else _stored_square(stored[n][0], 'jpeg') for n in names])
  np.testing.assert_array_equal(batch['images'], host)  # what the reader hands over
  rng = jax.random.key(4)
  augmenter = device_augment.SquareAugmenter(np.zeros(3, np.float32), None, S)
  views = np.asarray(jax.jit(lambda squares: augmenter(squares, rng=rng))(batch['images']))
  offsets, flips = jax.device_get(device_augment.random_windows(
      device_augment.example_keys(rng, 32), R, S))
  for square, view, offset, flip in zip(host, views, offsets, flips):
    np.testing.assert_array_equal(view, _window(square, offset, flip))


def test_device_ten_crops_equal_the_host_ten_crops_in_the_papers_order(demo):
  cfg = demo.config(store='raw', eval_crops=10, eval_split='train')
  squares = next(ip.eval_dataset(cfg, 8, keep_file_name=True).as_numpy_iterator())
  # The full-size path's host crops of the same images (augment.eval_images).
  full = next(ip.eval_dataset(dataclasses.replace(cfg, store='none'), 100,
                              keep_file_name=True).as_numpy_iterator())
  host = dict(zip(full['file_name'], full['images']))
  augmenter = device_augment.SquareAugmenter(np.zeros(3, np.float32), None, S, eval_crops=10)
  device = np.asarray(jax.jit(augmenter.eval_inputs)(squares['images']))
  assert device.shape == (8, 10, S, S, 3)
  for name, crops, square in zip(squares['file_name'], device, squares['images']):
    np.testing.assert_array_equal(crops, host[name])
    np.testing.assert_array_equal(crops, augment.eval_crops(tf.constant(square), S, 10))


# ----------------------------------------------------------------------------------
# A store that is not the run's: one line naming the command that prepares it.


@pytest.fixture(scope='module')
def own_store(demo, tmp_path_factory):
  """A data dir with the source and one store (jpeg, 27 px) prepared from it."""
  data_dir = _copy_source(demo, str(tmp_path_factory.mktemp('own_store')))
  cfg = config_lib.DataConfig(data_dir=data_dir, image_size=S, store='jpeg')
  return cfg


def _refused(cfg) -> str:
  with pytest.raises((square_store.MissingStoreError, square_store.DamagedStoreError)) as error:
    ip.host_batches(cfg, 4)
  message = str(error.value)
  assert '\n' not in message and square_store.prepare_command(cfg) in message
  return message


def test_a_store_that_is_not_the_runs_names_the_command_that_prepares_it(own_store):
  cfg = own_store
  assert 'is not prepared' in _refused(cfg)  # missing
  assert square_store.prepare(cfg)['images'] == 104
  next(ip.host_batches(cfg, 4))
  # Another R, encoding or quality: their own stores, not this one.
  for other in (dataclasses.replace(cfg, image_size=30), dataclasses.replace(cfg, store='raw'),
                dataclasses.replace(cfg, store_quality=75)):
    assert 'stores prepared there: imagenet2012_27px_jpeg_q90' in _refused(other)
  # Made from another source dataset: this store's files found under another's name.
  other_source = dataclasses.replace(cfg, dataset='imagenette')
  shutil.copytree(square_store.store_dir(cfg), square_store.store_dir(other_source))
  assert "made with {'source': 'imagenet2012'}" in _refused(other_source)
  # Half-written: what a killed preparation leaves (TFDS's temporary folder) is no store...
  raw = dataclasses.replace(cfg, store='raw')
  shutil.copytree(square_store.store_dir(cfg), os.path.join(
      os.path.dirname(square_store.store_dir(raw)), f'incomplete.KILLED_{square_store.VERSION}'))
  assert 'an unfinished preparation was found there' in _refused(raw)
  # ... and a store's folder without TFDS's dataset_info.json is a damaged store.
  copied = dataclasses.replace(cfg, store_quality=80)
  shutil.copytree(square_store.store_dir(cfg), square_store.store_dir(copied))
  os.remove(os.path.join(square_store.store_dir(copied), 'dataset_info.json'))
  assert 'dataset_info.json is missing. Prepare it again with: ' in _refused(copied)


def test_a_damaged_mean_image_in_the_store_is_one_line_naming_the_command(demo, tmp_path):
  cfg = demo.config(store='jpeg', mean='pixel', train_split='train')
  copied = dataclasses.replace(cfg, data_dir=str(tmp_path))
  shutil.copytree(square_store.store_dir(cfg), square_store.store_dir(copied))
  os.truncate(os.path.join(square_store.store_dir(copied), 'mean_image_train.npy'), 100)
  with pytest.raises(config_lib.UserError) as error:
    mean_image.mean_for(copied)
  message = str(error.value)
  assert '\n' not in message and 'the store is damaged' in message
  assert message.endswith(square_store.prepare_command(copied))


def test_preparing_twice_changes_nothing(own_store):
  cfg = own_store
  square_store.prepare(cfg)  # prepared by the test above, or now

  def snapshot():
    found = {}
    for folder, _, files in os.walk(os.path.dirname(os.path.dirname(square_store.store_dir(cfg)))):
      for name in files:
        path = os.path.join(folder, name)
        with open(path, 'rb') as f:
          found[path] = (os.stat(path).st_mtime_ns, f.read())
    return found

  before = snapshot()
  assert square_store.prepare(cfg) is None
  assert snapshot() == before


@pytest.mark.stderr
def test_eval_without_the_store_is_one_line_before_compiling_and_its_command_prepares_it(
    demo, tmp_path):
  data_dir = _copy_source(demo, str(tmp_path))
  flags = ['--mode=eval', f'--workdir={tmp_path}/run', f'--data_dir={data_dir}',
           '--train_split=train[:90%]', '--eval_split=train[90%:]', '--image_size=67',
           '--width=0.0625', '--num_classes=1000', '--store=raw']
  result = cli.run_main(*flags)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('alexnet_jax: error: the raw store of imagenet2012 at 77x77 '
                         '(for --image_size=67) is not prepared'), last
  # Checked before the checkpoint is restored (which compiles): the empty workdir's
  # missing checkpoint is not what it reports.
  assert 'checkpoint' not in result.stderr.lower()
  command = re.search(r'Prepare it with: (python -m alexnet_jax\.main --mode=prepare [^(]*) \(',
                      last)[1]
  env = dict(os.environ, PYTHONPATH=cli.ROOT)
  prepare = lambda: subprocess.run([sys.executable, *command.split()[1:]], cwd=cli.ROOT,
                                   env=env, capture_output=True, text=True, timeout=300)
  prepared = prepare()
  assert prepared.returncode == 0, prepared.stderr
  assert 'bytes per image' in prepared.stdout and 'ms of CPU per image' in prepared.stdout
  assert square_store.open_store(config_lib.DataConfig(data_dir=data_dir, image_size=67,
                                                        store='raw'))
  again = prepare()  # the same command again finds it
  assert again.returncode == 0 and again.stdout.startswith('Already prepared:'), again.stderr


# ----------------------------------------------------------------------------------
# A damaged store: every record checked where it is read, every file before a run reads it.


def _store_copy(demo, tmp_path, store='jpeg', **overrides):
  """A copy of the demo's store (27 px) with its source, to damage."""
  cfg = demo.config(store=store, train_split='train', eval_split='validation', **overrides)
  copied = dataclasses.replace(cfg, data_dir=_copy_source(demo, str(tmp_path)))
  shutil.copytree(square_store.store_dir(cfg), square_store.store_dir(copied))
  return copied


def _flip_bytes(cfg, split: str, where: str, record: int = 3) -> str:
  """Flips 32 bytes of one record of a split's shard: inside its image, or in its first bytes
  (a JPEG's header; a raw square's first row). Returns the shard's path."""
  builder = square_store.open_store(cfg)
  path = builder.info.splits[split].file_instructions[0].filename
  row = square_store.record_index(cfg)[os.path.basename(path)][record]
  start = row[square_store.IMAGE_OFFSET] + (
      row[square_store.IMAGE_LENGTH] // 2 if where == 'inside' else 0)
  with open(path, 'r+b') as f:
    f.seek(int(start))
    data = f.read(32)
    f.seek(int(start))
    f.write(bytes(b ^ 0x5A for b in data))
  square_store.open_store.cache_clear()
  return path


@pytest.mark.parametrize('store, where', [('jpeg', 'inside'), ('jpeg', 'header'),
                                          ('raw', 'inside')])
def test_a_damaged_training_record_stops_the_stream_with_one_line(demo, tmp_path, store, where):
  cfg = _store_copy(demo, tmp_path, store)
  path = _flip_bytes(cfg, 'train', where)
  batches = ip.host_batches(cfg, 26)
  with pytest.raises(ip.store_reader.DamagedRecordError) as error:
    for _ in range(4):  # a whole epoch: every record read once
      next(batches)
  message = str(error.value)
  assert '\n' not in message and f'record 3 of {path} is damaged' in message
  assert square_store.prepare_command(cfg) in message and '--skip_damaged_records' in message


def test_skipping_damaged_records_counts_them_and_keeps_each_batch_whole(demo, tmp_path):
  cfg = dataclasses.replace(_store_copy(demo, tmp_path), skip_damaged_records=True)
  _flip_bytes(cfg, 'train', 'inside')
  damaged = ip.store_reader.DamagedRecords(True, 'repair')
  batches = ip.host_batches(cfg, 26, damaged=damaged)
  epoch = [next(batches) for _ in range(4)]  # 104 images: every record once
  assert damaged.count == 1
  assert all(b['images'].shape == (26, R, R, 3) and len(b['labels']) == 26 for b in epoch)


def test_a_damaged_evaluation_record_is_one_line(demo, tmp_path):
  cfg = _store_copy(demo, tmp_path)
  _flip_bytes(cfg, 'validation', 'inside', record=1)
  with pytest.raises(config_lib.UserError) as error:
    list(ip.eval_batches(cfg, 4, meshes.mesh(1, 1)))
  message = str(error.value)
  assert '\n' not in message and 'is damaged' in message
  assert square_store.prepare_command(cfg) in message


@pytest.mark.parametrize('damage', ['store.json', 'record_index.npz', 'dataset_info.json',
                                    'mean_image_train.npy', 'a truncated shard'])
def test_a_missing_or_damaged_file_is_named_and_preparing_again_repairs_the_store(
    demo, tmp_path, damage):
  cfg = _store_copy(demo, tmp_path)
  directory = square_store.store_dir(cfg)
  if damage == 'a truncated shard':
    name = os.path.basename(square_store.open_store(cfg).info.splits['train']
                            .file_instructions[0].filename)
    os.truncate(os.path.join(directory, name), 1000)
  else:
    name = damage
    os.remove(os.path.join(directory, name))
  square_store.open_store.cache_clear()
  with pytest.raises(square_store.DamagedStoreError) as error:
    dataset.prepare(cfg)  # what a training run does first
  assert name in str(error.value) and square_store.prepare_command(cfg) in str(error.value)
  dataset.prepare(cfg, repair=True)  # what that command does
  next(ip.host_batches(cfg, 8))
  assert mean_image.mean_for(dataclasses.replace(cfg, mean='pixel')).shape == (R, R, 3)
  assert [n for n in os.listdir(os.path.dirname(directory)) if '.damaged-' in n]  # kept


def test_a_damaged_record_is_found_by_preparing_again(demo, tmp_path):
  cfg = _store_copy(demo, tmp_path)
  _flip_bytes(cfg, 'train', 'inside')
  dataset.prepare(cfg)  # a training run's quick check: the files are all there
  dataset.prepare(cfg, repair=True)  # --mode=prepare reads every record
  batches = ip.host_batches(cfg, 26)
  for _ in range(4):
    next(batches)


def test_a_store_of_an_earlier_format_is_named_and_a_new_one_prepared_beside_it(demo, tmp_path):
  """A store written before the index located each record's CRC (1.0.0) is not read: the
  run says where it is, and preparing writes the current format next to it."""
  cfg = _store_copy(demo, tmp_path, store='raw')
  current = square_store.store_dir(cfg)
  older = os.path.join(os.path.dirname(current), '1.0.0')
  os.rename(current, older)
  message = _refused(cfg)
  assert f'{older} holds it in an earlier format, which is not read' in message
  dataset.prepare(cfg)
  versions = [name for name in os.listdir(os.path.dirname(current)) if not name.startswith('.')]
  assert sorted(versions) == ['1.0.0', square_store.VERSION]
  next(ip.host_batches(cfg, 4))


@pytest.mark.stderr
def test_preparing_a_store_into_a_log_draws_no_progress_bars(demo, tmp_path, capfd):
  """Only the store is prepared here (its source is): the bars are off for that builder too."""
  tfds.enable_progress_bar()  # as at the start of a run; any earlier preparation turned them off
  cfg = config_lib.DataConfig(data_dir=_copy_source(demo, str(tmp_path)), image_size=S,
                              store='raw')
  dataset.prepare(cfg)
  assert 'examples' not in capfd.readouterr().err  # "Generating train examples...: 0 examples"


def test_what_a_stopped_preparation_left_is_removed_by_the_next(demo, tmp_path):
  data_dir = _copy_source(demo, str(tmp_path))
  cfg = config_lib.DataConfig(data_dir=data_dir, image_size=S, store='raw')
  parent = os.path.dirname(square_store.store_dir(cfg))
  os.makedirs(os.path.join(parent, f'incomplete.KILLED_{square_store.VERSION}', 'half'))
  dataset.prepare(cfg)
  assert sorted(n for n in os.listdir(parent) if not n.startswith('.')) == [square_store.VERSION]
