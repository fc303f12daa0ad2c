"""Every bad input of issue 12 answered as a user sees it: exit 1, one line, no traceback,
and nothing compiled before it (JAX's persistent cache records every compiled program)."""

import os

import pytest

from alexnet_jax.data import demo_data
from tests import cli


@pytest.fixture(scope='module')
def truncated_tars(tmp_path_factory):
  """A demo manual_dir whose train tar lost its second half (an interrupted download)."""
  manual = tmp_path_factory.mktemp('truncated')
  demo_data.write_demo_imagenet(str(manual), images_per_class=3, seed=0, image_size=(40, 48),
                                val_images=2)
  tar = manual / demo_data.TRAIN_TAR
  os.truncate(tar, os.path.getsize(tar) // 2)
  return str(manual)


def _train(demo, tmp_path, **overrides):
  flags = dict(mode='train', workdir=f'{tmp_path}/run', data_dir=demo.data_dir,
               manual_dir=demo.manual_dir, train_split='train[:90%]', eval_split='train[90%:]',
               image_size=67, width=0.125, num_classes=1000, batch_size=8, num_train_steps=2)
  flags.update(overrides)
  return [f'--{name}={value}' for name, value in flags.items()]


def _not_an_image(tmp_path):
  path = tmp_path / 'notes.jpg'
  path.write_text('this is text, not pixels')
  return str(path)


def _empty_image(tmp_path):
  (tmp_path / 'empty.jpg').write_bytes(b'')
  return str(tmp_path / 'empty.jpg')


def _empty_folder(tmp_path):
  (tmp_path / 'photos').mkdir()
  (tmp_path / 'photos' / 'readme.txt').write_text('no images here')
  return str(tmp_path / 'photos')


def _a_file(tmp_path):
  (tmp_path / 'data').write_text('')
  return str(tmp_path / 'data')


# name: (flags given the demo, tmp_path and the truncated tars, what the line says)
CASES = {
    'num_epochs_inf': (lambda d, t, _: _train(d, t, num_epochs='inf', num_train_steps=0),
                       '--num_epochs=inf must be a finite number.'),
    'num_epochs_nan': (lambda d, t, _: _train(d, t, num_epochs='nan'),
                       '--num_epochs=nan must be a finite number.'),
    'learning_rate_nan': (lambda d, t, _: _train(d, t, learning_rate='nan'),
                          '--learning_rate=nan must be a finite number.'),
    'width_nan': (lambda d, t, _: _train(d, t, width='nan'), '--width=nan must be a finite'),
    'cpu_devices_0': (lambda d, t, _: _train(d, t, cpu_devices=0),
                      '--cpu_devices must be at least 1, got 0.'),
    'cpu_devices_negative': (lambda d, t, _: _train(d, t, cpu_devices=-2),
                             '--cpu_devices must be at least 1, got -2.'),
    'data_dir_is_a_file': (lambda d, t, _: _train(d, t, data_dir=_a_file(t)),
                           'is a file; it must be a directory.'),
    'predict_a_url': (lambda d, t, _: _train(d, t, mode='predict',
                                             image='https://example.org/cat.jpg'),
                      'is a URL: download it first'),
    'predict_a_folder_without_images': (
        lambda d, t, _: _train(d, t, mode='predict', image=_empty_folder(t)),
        'is a directory without readable image files'),
    'predict_a_file_that_is_no_image': (
        lambda d, t, _: _train(d, t, mode='predict', image=_not_an_image(t)),
        'notes.jpg is not an image (JPEG, PNG, GIF, BMP).'),
    'predict_an_empty_file': (
        lambda d, t, _: _train(d, t, mode='predict', image=_empty_image(t)),
        'empty.jpg is empty (0 bytes).'),
    'truncated_train_tar': (
        lambda d, t, tars: _train(d, t, manual_dir=tars, data_dir=f'{t}/tfds'),
        f'{demo_data.TRAIN_TAR} in '),
    'too_big_for_memory': (lambda d, t, _: _train(d, t, image_size=10000, width=1.0),
                           'a training step of this configuration needs at least'),
    'unknown_flag': (lambda d, t, _: ['--mode=train', '--epochs=3'],
                     "Unknown command line flag 'epochs'"),
    'invalid_flag_value': (lambda d, t, _: _train(d, t, towers=3), 'towers must be 1 or 2'),
    'fsdp_channels_do_not_divide': (
        lambda d, t, _: _train(d, t, parallelism='fsdp', cpu_devices=4),
        "--parallelism=fsdp splits conv1's 6 output channels per tower over 4 devices"),
    'hybrid_with_a_tower_axis': (
        lambda d, t, _: _train(d, t, parallelism='hybrid', cpu_devices=2, mesh='data:1,tower:2'),
        '--parallelism=hybrid runs every tower on every device: it takes no tower axis'),
    'batch_does_not_divide_over_the_devices': (
        lambda d, t, _: _train(d, t, parallelism='data', cpu_devices=4, batch_size=6),
        '--batch_size=6 must be a positive multiple of the data axis (4)'),
}


@pytest.mark.stderr
@pytest.mark.slow
@pytest.mark.parametrize('name', CASES)
def test_a_bad_input_is_one_line_before_anything_is_compiled(demo, truncated_tars, tmp_path,
                                                             name):
  flags, message = CASES[name]
  result, compiled = cli.run_main_recording_compiles(tmp_path / 'compiled',
                                                     *flags(demo, tmp_path, truncated_tars))
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stderr
  [line] = cli.problems(result.stderr)
  assert line.startswith('alexnet_jax: error: ') and message in line, line
  assert compiled == [], compiled
