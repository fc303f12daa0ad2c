"""The demo ImageNet writer: the layout the TFDS builder reads, and the odd files."""

import hashlib
import io
import os
import re
import tarfile

import numpy as np
from PIL import Image
import pytest

from alexnet_jax.data import demo_data
from alexnet_jax.data import square_store
from tests import cli


def _read_train(path):
  """{synset tar name: {image name: bytes}}."""
  out = {}
  with tarfile.open(path) as outer:
    for member in outer.getmembers():
      inner = tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read()))
      out[member.name] = {m.name: inner.extractfile(m).read() for m in inner.getmembers()}
  return out


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp('demo_manual')
  summary = demo_data.write_demo_imagenet(str(root), images_per_class=3, seed=5,
                                          image_size=(40, 64), val_images=5)
  return root, summary


def _tfds_synsets():
  import importlib.resources  # pylint: disable=import-outside-toplevel
  path = importlib.resources.files('tensorflow_datasets') / 'datasets/imagenet2012/labels.txt'
  return set(path.read_text().split())


def test_train_tar_is_imagenet_shaped(written):
  root, summary = written
  train = _read_train(root / demo_data.TRAIN_TAR)
  synsets = [c.synset for c in demo_data.CLASSES]
  assert sorted(train) == sorted(f'{s}.tar' for s in synsets)
  assert set(synsets) <= _tfds_synsets()  # the real builder's label list accepts them
  for tar_name, images in train.items():
    synset = tar_name[:-4]
    assert all(re.fullmatch(rf'{synset}_\d+\.JPEG', name) for name in images)
  # 3 regular images per class, plus 4 odd images and 1 corrupt file.
  assert sum(len(v) for v in train.values()) == summary.num_train_files == 8 * 3 + 5
  assert summary.num_valid_train_images == 8 * 3 + 4


def test_val_tar_names(written):
  root, _ = written
  with tarfile.open(root / demo_data.VAL_TAR) as tar:
    names = tar.getnames()
  assert names == [f'ILSVRC2012_val_{i:08d}.JPEG' for i in range(1, 6)]


def test_oddities_are_what_they_claim(written):
  root, summary = written
  files = {name: data for images in _read_train(root / demo_data.TRAIN_TAR).values()
           for name, data in images.items()}
  odd = summary.oddities
  with Image.open(io.BytesIO(files[odd['cmyk']])) as im:
    assert (im.format, im.mode) == ('JPEG', 'CMYK')
  with Image.open(io.BytesIO(files[odd['gray']])) as im:
    assert (im.format, im.mode) == ('JPEG', 'L')
  with Image.open(io.BytesIO(files[odd['png']])) as im:
    assert im.format == 'PNG' and odd['png'].endswith('.JPEG')
  with Image.open(io.BytesIO(files[odd['small']])) as im:
    assert im.size == (100, 60)
  with pytest.raises(OSError):
    with Image.open(io.BytesIO(files[odd['corrupt']])) as im:
      im.load()
  regular = [n for n in files if n not in odd.values()]
  for name in regular:
    with Image.open(io.BytesIO(files[name])) as im:
      assert (im.format, im.mode) == ('JPEG', 'RGB') and 40 <= min(im.size) <= max(im.size) <= 64


def test_labels_follow_the_synset_of_the_file(written):
  _, summary = written
  for name, label in summary.labels.items():
    assert name.startswith(demo_data.CLASSES[label].synset + '_')


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
  def digest(seed, sub):
    demo_data.write_demo_imagenet(str(tmp_path / sub), images_per_class=1, seed=seed,
                                  image_size=(32, 40), val_images=1)
    return hashlib.sha256((tmp_path / sub / demo_data.TRAIN_TAR).read_bytes()).hexdigest()
  assert digest(1, 'a') == digest(1, 'b')
  assert digest(1, 'a') != digest(2, 'c')


def test_classes_differ_in_colour():
  # The drawn object carries its class's colour: the mean colour of the pixels that
  # differ most from the background is nearest to the class's colour.
  rng = np.random.default_rng(0)
  colours = np.array([c.color for c in demo_data.CLASSES], np.float32)
  for label in range(len(demo_data.CLASSES)):
    image = np.asarray(demo_data.draw_image(rng, label, 120, 100), np.float32)
    saturation = image.max(axis=-1) - image.min(axis=-1)
    object_colour = image[saturation >= saturation.max() - 30].mean(axis=0)
    assert np.argmin(np.linalg.norm(colours - object_colour, axis=1)) == label


@pytest.mark.slow
def test_prepare_mode_writes_the_demo_tars_then_prepares_them(tmp_path):
  result = cli.run_main('--mode=prepare', '--demo_data', f'--manual_dir={tmp_path}/manual',
                        f'--data_dir={tmp_path}/tfds', '--image_size=67')
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path / 'manual')) == sorted([demo_data.TRAIN_TAR,
                                                             demo_data.VAL_TAR])
  assert result.stdout.startswith(f'Prepared {tmp_path}/tfds/alexnet_squares/imagenet2012_77px'
                                  f'_jpeg_q90/{square_store.VERSION}: jpeg store of imagenet2012')
