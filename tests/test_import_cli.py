"""--mode=import as a user runs it: a zoo-shaped file, then every mode on the imported net."""

import json
import os
import shutil

import onnx
from PIL import Image
import pytest

from tests import cli
from tests import onnx_zoo


def _main(*flags, **kwargs):
  result = cli.run_main(*flags, **kwargs)
  assert result.returncode == 0, result.stderr
  return result


@pytest.mark.slow
@pytest.mark.stderr
def test_an_imported_net_is_evaluated_predicted_drawn_summarized_and_fine_tuned(demo, tmp_path):
  model = tmp_path / 'bvlcalexnet-12.onnx'
  onnx.save(onnx_zoo.alexnet(opset=12, image_size=72, width=0.125), model)
  imported, data_dir = str(tmp_path / 'imported'), str(tmp_path / 'tfds')
  shutil.copytree(demo.data_dir, data_dir)
  data = [f'--data_dir={data_dir}', '--train_split=train[:90%]', '--eval_split=train[90%:]']
  result = _main('--mode=import', f'--onnx={model}', f'--workdir={imported}')
  assert result.stdout.startswith(f'Imported {model} into {imported}: 2 towers, 1000 classes, '
                                  '72x72 input, caffe LRN, caffe input convention')
  _main('--mode=prepare', '--image_size=72', f'--data_dir={data_dir}')  # its store of squares
  # No model flag anywhere below: the net comes from the checkpoint.
  for crops in (1, 10):
    evaluated = _main('--mode=eval', f'--workdir={imported}', *data, f'--eval_crops={crops}')
    assert 'train[90%:] at step 0: ' in evaluated.stdout and f'{crops} crop(s)' in evaluated.stdout
  image = tmp_path / 'red.png'
  Image.new('RGB', (90, 70), (200, 30, 30)).save(image)
  predicted = _main('--mode=predict', f'--workdir={imported}', *data, f'--image={image}')
  assert predicted.stdout.splitlines()[:2] == ['Checkpoint step 0, 1 crop(s):', str(image)]
  # Without a dataset: ImageNet's class names ship with the code.
  alone = _main('--mode=predict', f'--workdir={imported}', f'--image={image}',
                f'--data_dir={tmp_path}/nothing')
  assert alone.stdout.splitlines()[:2] == predicted.stdout.splitlines()[:2]
  assert len(alone.stdout.splitlines()) == 7 and '%' in alone.stdout.splitlines()[2]
  _main('--mode=visualize', f'--workdir={imported}', *data, '--queries=2', '--neighbours=2',
        '--max_train_images=16')
  figures = json.load(open(os.path.join(imported, 'figures', 'summary.json')))
  assert figures['step'] == 0 and len(figures['towers']) == 2
  summary = _main('--mode=summary', f'--workdir={imported}', '--cpu_devices=2',
                  '--mesh=data:1,tower:2', '--batch_size=8', cpu_devices=2)
  rows = [line.split() for line in summary.stdout.splitlines() if line.startswith('forward')]
  assert {r[2] for r in rows if r[1] == 'tower'} >= {'conv1_lrn', 'conv2_lrn'}, summary.stdout
  tuned = str(tmp_path / 'tuned')
  trained = _main('--mode=train', f'--workdir={tuned}', f'--init_from={imported}', *data,
                  '--batch_size=8', '--num_train_steps=10', '--eval_every_steps=10',
                  '--learning_rate=0.001')
  assert f'Starting from the parameters of step 0 in {imported}' in trained.stderr
  assert os.path.isdir(os.path.join(tuned, 'checkpoints', '10'))
  # A model flag that contradicts the checkpoint's net is one line.
  refused = cli.run_main('--mode=eval', f'--workdir={imported}', *data, '--width=0.5')
  assert refused.returncode == 1
  [line] = cli.problems(refused.stderr)
  assert line == (f'alexnet_jax: error: --width=0.5: the checkpoint in {imported} holds a net '
                  'with width=0.125. Drop the flag (a run on a workdir takes its net from its '
                  'checkpoint), or use another --workdir.')


@pytest.mark.slow
@pytest.mark.stderr
@pytest.mark.parametrize('case', ['not onnx', 'truncated', 'another net', 'a workdir in use'])
def test_a_bad_import_is_one_line_and_writes_no_checkpoint(tmp_path, case):
  model, workdir = tmp_path / 'net.onnx', tmp_path / 'run'
  data = onnx_zoo.alexnet(opset=9, image_size=72, width=0.125).SerializeToString()
  if case == 'not onnx':
    model.write_text('a text file')
  elif case == 'truncated':
    model.write_bytes(data[:len(data) // 2])
  else:
    model.write_bytes(data)
  if case == 'another net':
    graph = onnx_zoo.alexnet(opset=9, image_size=72, width=0.125)
    conv2 = next(node for node in graph.graph.node if node.output[0] == 'conv2_1')
    next(a for a in conv2.attribute if a.name == 'group').i = 1
    onnx.save(graph, model)
  if case == 'a workdir in use':
    (workdir / 'checkpoints' / '7').mkdir(parents=True)
  result = cli.run_main('--mode=import', f'--onnx={model}', f'--workdir={workdir}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  [line] = cli.problems(result.stderr)
  expected = {'not onnx': 'is not an ONNX file', 'truncated': 'is truncated or damaged',
              'another net': 'conv2 has 1 group, expected 2',
              'a workdir in use': 'already holds a run'}[case]
  assert line.startswith('alexnet_jax: error: ') and expected in line, line
  steps = os.listdir(workdir / 'checkpoints') if (workdir / 'checkpoints').exists() else []
  assert steps == (['7'] if case == 'a workdir in use' else [])
