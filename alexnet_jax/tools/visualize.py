"""What a trained net learned: the paper's Figures 3 and 4, learning curves, results table.

Figures of one checkpoint, into WORKDIR/figures/ (or --figures_dir):
  conv1_kernels.png     Figure 3: the first-layer kernels, tower 1 above tower 2 (each
                        labelled), each min-max normalized; with each tower's colour
                        fraction (below).
  nearest_neighbours.png  Figure 4: query images of the eval split (first column) and the
                        training images nearest to them in fc7 space.
  learning_curves.png   loss, top-1/top-5 error and learning rate from metrics.jsonl.
  summary.json          the step, the colour statistics and the neighbours found.

  python -m alexnet_jax.main --mode=visualize --flagfile=experiments/visualize.flags

The results table (docs/RESULTS.md): the paper's numbers beside each run's newest
eval/<split>_step<N>[_crops<C>].json, and its Figure 3/4 statistics where summary.json exists.

  python -m alexnet_jax.main --mode=visualize --results --runs=[EXPERIMENT=]WORKDIR,...

Colour fraction (Figure 3). At each pixel a kernel's weights over the colour axis are an
RGB vector w; its grey part is (w . g) g with g = (1, 1, 1) / sqrt(3), what a kernel that
sees only luminance would have. A kernel's colour fraction is
sum ||w - (w . g) g||^2 / sum ||w||^2 over its pixels: 0 when its three colour planes are
equal (colour-agnostic), 1 when it has no grey part at all (e.g. red minus green). A kernel
in one channel only scores 2/3, and so do random weights on average (two of the three
colour directions): a tower's mean starts near 2/3. No mean is removed first: a constant
offset is itself grey. The paper saw tower 1 learn mostly colour-agnostic kernels (a tower
mean well below 2/3) and tower 2 mostly colour-specific ones (a mean above tower 1's).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterator, Sequence

import jax
import numpy as np

from alexnet_jax import device_augment
from alexnet_jax import flags as flags_lib
from alexnet_jax import parallel
from alexnet_jax.config import UserError

ROOT = flags_lib.ROOT
CHANCE_COLOR_FRACTION = 2 / 3
SUMMARY = 'summary.json'


# ----------------------------------------------------------------------------------
# Figure 3: first-layer kernels.


def color_fraction(kernels: np.ndarray) -> np.ndarray:
  """Colour fraction (module docstring) of each kernel: (..., k, k, 3, C) -> (..., C)."""
  w = np.asarray(kernels, np.float64)
  grey = w.sum(axis=-2) / np.sqrt(3)                         # w . g at every pixel
  total = np.square(w).sum(axis=(-4, -3, -2))
  colour = total - np.square(grey).sum(axis=(-3, -2))
  return np.where(total > 0, colour / np.where(total > 0, total, 1.0), 0.0)


def kernel_figure(params, path: str) -> list[dict]:
  """Writes Figure 3 of params' conv1 to path; returns each tower's colour fractions."""
  from alexnet_jax.tools import figures  # pylint: disable=import-outside-toplevel
  kernels = np.asarray(jax.device_get(params['conv1']['kernel']))  # (towers, k, k, 3, C)
  figures.save_png(figures.labelled_kernel_grid(kernels), path)
  return [{'tower': t + 1, 'mean_color_fraction': float(np.mean(f)),
           'median_color_fraction': float(np.median(f)), 'color_fraction': f.tolist()}
          for t, f in enumerate(color_fraction(kernels))]


# ----------------------------------------------------------------------------------
# Figure 4: nearest neighbours in fc7 space.


def _embedder(model_config, mesh, normalizer):
  """jit(uint8 eval images -> fc7 of both towers (B, 4096 * width)) of the centre crops.

  The images are what the 1-crop eval pipeline gives: squares, or (B, 1, S, S, 3) crops.
  """
  forward = parallel.sharded_forward(model_config, mesh, features='fc7')
  return jax.jit(lambda params, images: forward(params, normalizer.eval_inputs(images)[:, 0])[1])


def _fc7_batches(embed, params, mesh, data_config, batch_size: int,
                 limit: int) -> Iterator[tuple[np.ndarray, dict]]:
  """(fc7, examples) of the first `limit` examples of data_config.eval_split, by batch.

  Un-augmented centre crops, in the split's stored order; examples holds 'images' uint8
  (n, S, S, 3), 'labels' and 'file_names'.
  """
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  cfg = dataclasses.replace(data_config, eval_crops=1)
  sharding = parallel.batch_sharding(mesh)
  seen = 0
  batches = input_pipeline.eval_dataset(cfg, batch_size, keep_file_name=True)
  for batch in batches.as_numpy_iterator():
    with jax.set_mesh(mesh):
      fc7 = np.asarray(jax.device_get(embed(params, jax.device_put(batch['images'], sharding))))
    images = (batch['images'][:, 0] if cfg.store == 'none'
              else device_augment.centre_crop(batch['images'], cfg.image_size))
    keep = np.flatnonzero(batch['mask'])[:limit - seen]     # real examples, up to the limit
    seen += len(keep)
    yield fc7[keep], {'images': images[keep], 'labels': batch['labels'][keep],
                      'file_names': batch['file_name'][keep].astype(str)}
    if seen >= limit:
      return


class Nearest:
  """The n examples nearest to each query (Euclidean), kept while examples stream past.

  Memory: n examples per query plus one batch, however many examples are searched.
  """

  def __init__(self, queries: np.ndarray, n: int):
    self.queries, self.n = np.asarray(queries, np.float64), n
    self.distances = np.zeros((len(queries), 0))
    self.examples: dict[str, np.ndarray] = {}                # each (K, m, ...)

  def add(self, features: np.ndarray, examples: dict[str, np.ndarray]) -> None:
    """features (b, D) and the examples' arrays (b, ...)."""
    (queries, held), batch = self.distances.shape, len(features)
    new = np.sqrt(np.square(self.queries[:, None] - np.asarray(features, np.float64)).sum(-1))
    distances = np.concatenate([self.distances, new], axis=1)
    order = np.argsort(distances, axis=1, kind='stable')[:, :self.n]
    # One pool of candidates: the held examples (query-major), then the batch's.
    pool_index = np.concatenate([np.arange(queries)[:, None] * held + np.arange(held),
                                 np.broadcast_to(queries * held + np.arange(batch),
                                                 (queries, batch))], axis=1)
    picked = np.take_along_axis(pool_index, order, axis=1)
    for key, value in examples.items():
      kept = self.examples.get(key, np.zeros((queries, 0) + value.shape[1:], value.dtype))
      self.examples[key] = np.concatenate([kept.reshape((-1,) + value.shape[1:]), value])[picked]
    self.distances = np.take_along_axis(distances, order, axis=1)


def nearest_neighbours(model_config, mesh, params, normalizer, data_config, *, batch_size: int,
                       queries: int = 8, neighbours: int = 6,
                       max_train_images: int = 10_000) -> dict:
  """Figure 4's search: the training images nearest to eval images in fc7 space.

  Queries are the first `queries` examples of data_config.eval_split; the search covers
  the first `max_train_images` of data_config.train_split, as un-augmented centre crops
  (the eval pipeline run on the training split, every example once).
  Returns {'queries': examples, 'neighbours': examples with a (K, n) leading shape,
  'distances': (K, n), 'searched': int}, examples as in _fc7_batches.
  """
  embed = _embedder(model_config, mesh, normalizer)
  found = list(_fc7_batches(embed, params, mesh, data_config, batch_size, queries))
  if not found:
    raise UserError(f'{data_config.eval_split} has no images to query with.')
  query_examples = {key: np.concatenate([e[key] for _, e in found]) for key in found[0][1]}
  nearest = Nearest(np.concatenate([fc7 for fc7, _ in found]), neighbours)
  train = dataclasses.replace(data_config, eval_split=data_config.train_split)
  searched = 0
  for fc7, examples in _fc7_batches(embed, params, mesh, train, batch_size, max_train_images):
    nearest.add(fc7, examples)
    searched += len(fc7)
  return {'queries': query_examples, 'neighbours': nearest.examples,
          'distances': nearest.distances, 'searched': searched}


def neighbour_figure(found: dict, path: str) -> dict:
  """Writes Figure 4 to path; returns the neighbours as JSON-ready lists."""
  from alexnet_jax.tools import figures  # pylint: disable=import-outside-toplevel
  queries, neighbours = found['queries'], found['neighbours']
  same = neighbours['labels'] == queries['labels'][:, None]
  figures.save_png(figures.neighbour_grid(queries['images'], neighbours['images'], same), path)
  return {'searched': found['searched'], 'same_label_fraction': float(same.mean()),
          'queries': [{'file_name': name, 'label': int(label),
                       'neighbours': [{'file_name': n, 'label': int(l), 'distance': float(d)}
                                      for n, l, d in zip(names, labels, distances)]}
                      for name, label, names, labels, distances in zip(
                          queries['file_names'], queries['labels'], neighbours['file_names'],
                          neighbours['labels'], found['distances'])]}


# ----------------------------------------------------------------------------------
# All figures of one checkpoint.


def run(model_config, data_config, mesh, workdir: str, *, batch_size: int,
        queries: int = 8, neighbours: int = 6, max_train_images: int = 10_000,
        step: int | None = None, out_dir: str | None = None, seed: int = 0) -> dict:
  """Writes the figures of workdir's newest checkpoint (or `step`) and summary.json.

  Returns the summary: the step, each tower's colour fractions (also those of the
  initialization the run started from, drawn again from `seed`), the neighbours found.
  """
  from alexnet_jax import train  # pylint: disable=import-outside-toplevel
  from alexnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  from alexnet_jax.tools import figures  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    raise UserError('visualize runs on one host: start it as a single process.')
  out_dir = out_dir or os.path.join(workdir, 'figures')
  step, params = train.restore_params(model_config, mesh, workdir, step)
  # Centre crops: the neighbours are searched among un-augmented training images.
  normalizer = input_pipeline.normalizer_for(dataclasses.replace(data_config, eval_crops=1),
                                             workdir)
  summary = {'workdir': workdir, 'step': step,
             'chance_color_fraction': CHANCE_COLOR_FRACTION,
             'towers': kernel_figure(params, os.path.join(out_dir, 'conv1_kernels.png'))}
  initial = parallel.init_sharded_params(model_config, jax.random.key(seed), mesh)
  for tower, fractions in zip(summary['towers'], color_fraction(
      jax.device_get(initial['conv1']['kernel']))):
    tower['initial_mean_color_fraction'] = float(np.mean(fractions))
  found = nearest_neighbours(model_config, mesh, params, normalizer, data_config,
                             batch_size=batch_size, queries=queries, neighbours=neighbours,
                             max_train_images=max_train_images)
  summary['nearest_neighbours'] = neighbour_figure(
      found, os.path.join(out_dir, 'nearest_neighbours.png'))
  if os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    figures.learning_curves([workdir], os.path.join(out_dir, 'learning_curves.png'))
  with open(os.path.join(out_dir, SUMMARY), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary


def summary_lines(summary: dict) -> list[str]:
  """What run() measured, for the terminal."""
  lines = [f"Checkpoint step {summary['step']} of {summary['workdir']}:"]
  lines += [f"  conv1 tower {t['tower']}: mean colour fraction {t['mean_color_fraction']:.3f} "
            f"(median {t['median_color_fraction']:.3f}, at initialization "
            f"{t['initial_mean_color_fraction']:.3f}; grey 0, random 2/3, no grey part 1)"
            for t in summary['towers']]
  found = summary['nearest_neighbours']
  lines.append(f"  fc7 neighbours: {100 * found['same_label_fraction']:.1f}% share the query's "
               f"label ({found['searched']} training images searched)")
  return lines


# ----------------------------------------------------------------------------------
# The results table.

# experiment: (what it changes, paper top-1 error, paper top-5 error), in % on ILSVRC-2012
# val, one CNN, 10 crops: the paper's net, and for an ablation that plus the difference
# the paper gives for it (ALEXNET.md, "Results to compare with").
PAPER = {
    'paper': ("the paper's two-tower net (section 5)", '40.7', '18.2'),
    'one_tower': ('one tower, as on one GPU (footnote 2)', '42.4 (+1.7)', '19.4 (+1.2)'),
    'no_lrn': ('no local response normalization (3.3)', '42.1 (+1.4)', '19.4 (+1.2)'),
    'non_overlapping_pool': ('2x2 stride-2 pooling (3.4)', '41.1 (+0.4)', '18.5 (+0.3)'),
    'no_pca': ('no PCA colour noise (4.1: "over 1%" top-1)', '> 41.7 (> +1)', '—'),
    'large_batch': ('batch 4096, bfloat16, cosine (not in the paper)', '—', '—'),
    'quickstart': ('demo data on a CPU (not in the paper)', '—', '—'),
}
IMAGENET = 'imagenet2012'


def experiments(directory: str = os.path.join(ROOT, 'experiments')) -> dict:
  """The flags of every training experiment in directory: {name: absl FlagValues}."""
  found = {}
  for path in sorted(glob.glob(os.path.join(directory, '*.flags'))):
    values = flags_lib.read_flagfile(path)
    if values.mode == 'train' and values.workdir:
      found[os.path.splitext(os.path.basename(path))[0]] = values
  return found


def experiment_of(workdir: str, known: dict[str, dict]) -> str:
  """The experiment whose --workdir is workdir, or whose name is workdir's basename."""
  path = os.path.abspath(workdir)
  for name in sorted(known, key=lambda n: n not in PAPER):  # the paper's experiments first
    if os.path.abspath(os.path.join(ROOT, known[name].workdir)) == path:
      return name
  return os.path.basename(os.path.normpath(workdir))


def named_runs(runs: Sequence[str], known: dict[str, dict]) -> list[tuple[str, str]]:
  """(experiment, workdir) of each '[EXPERIMENT=]WORKDIR'."""
  named = []
  for run_spec in runs:
    name, _, workdir = run_spec.rpartition('=')
    named.append((name or experiment_of(workdir, known), workdir))
  return named


def newest_evals(workdir: str) -> list[dict]:
  """The newest eval/<split>_step<N>[_crops<C>].json of each split and crop count."""
  newest = {}
  for path in glob.glob(os.path.join(workdir, 'eval', '*_step*.json')):
    with open(path) as f:
      result = json.load(f)
    key = (result['split'], result.get('crops', 1))
    if result['step'] >= newest.get(key, {'step': -1})['step']:
      newest[key] = result
  return [newest[key] for key in sorted(newest)]


def _data_name(values) -> str:
  """The data an experiment's flags train on ('?' without a flagfile)."""
  if values is None:
    return '?'
  if values.demo_data:
    return 'demo (8 drawn classes)'
  return values.dataset


def results_table(runs: Sequence[str], experiments_dir: str = os.path.join(ROOT, 'experiments'),
                  command: str = '', note: str = '') -> str:
  """docs/RESULTS.md: the paper's errors beside those measured by runs ([NAME=]WORKDIR)."""
  known = experiments(experiments_dir)
  named = named_runs(runs, known)
  order = list(PAPER) + [n for n, _ in named if n not in PAPER]
  rows, measured_imagenet = [], False
  for name in order:
    change, top1, top5 = PAPER.get(name, ('', '—', '—'))
    data = _data_name(known.get(name))
    for r in [r for n, w in named if n == name for r in newest_evals(w)] or [None]:
      if r is None:
        measured = ['—', '—', data, '—', '—', '—']
      else:
        measured_imagenet |= data == IMAGENET
        measured = [f"{100 * (1 - r['top1']):.1f}", f"{100 * (1 - r['top5']):.1f}",
                    f"{data}, `{r['split']}`", r['crops'], r['step'], r['num_examples']]
      rows.append('| ' + ' | '.join(map(str, [name, change, top1, top5, *measured])) + ' |')
  lines = [
      '# Results', '',
      f'Written by `{command or "python -m alexnet_jax.main --mode=visualize --results --runs=..."}`; '
      'rerun it rather than editing this file.', '',
      "Paper: top-1 / top-5 error (%) on ILSVRC-2012 validation, one CNN, 10 crops (40.7 / "
      '18.2); an ablation is that plus the difference the paper reports for it. Measured: '
      "each run's newest `eval/<split>_step<N>[_crops<C>].json` of each split and crop "
      'count, both in the table '
      '(in-training evaluation is 1 crop; `--mode=eval --eval_crops=10` gives the paper\'s '
      'protocol). — means not reported or not measured.', '']
  if not measured_imagenet:
    lines += ['**No ImageNet run has been measured yet.** Rows on the demo data (8 classes of '
              'drawn shapes) check that the code learns; they are not comparable to the paper.',
              '']
  lines += ['| experiment | changes | paper top-1 | paper top-5 | top-1 | top-5 | data, split | '
            'crops | step | examples |', '|---|---|---|---|---|---|---|---|---|---|', *rows, '']
  lines += [note, ''] if note else []
  lines += _figure_lines(named)
  return '\n'.join(lines)


def _figure_lines(named: Sequence[tuple[str, str]]) -> list[str]:
  """The Figure 3/4 statistics of the runs whose figures were made."""
  rows = []
  for name, workdir in named:
    path = os.path.join(workdir, 'figures', SUMMARY)
    if os.path.exists(path):
      with open(path) as f:
        summary = json.load(f)
      fractions, initial = (' / '.join(f'{t[key]:.3f}' for t in summary['towers'])
                            for key in ('mean_color_fraction', 'initial_mean_color_fraction'))
      found = summary['nearest_neighbours']
      rows.append(f"| {name} | {summary['step']} | {fractions} | {initial} | "
                  f"{100 * found['same_label_fraction']:.1f}% | {found['searched']} |")
  if not rows:
    return []
  return ['## Figures 3 and 4', '',
          'Mean colour fraction of the conv1 kernels per tower (tower 1 / tower 2; 0: grey, '
          '2/3: random weights on average, 1: no grey part; definition in '
          '`alexnet_jax/tools/visualize.py`), after training and in the initialization the run '
          'started from. The paper saw tower 1 learn mostly colour-agnostic '
          'kernels and tower 2 mostly colour-specific ones (Figure 3; no number given). '
          "Neighbours: share of the fc7 nearest training images with the query's label "
          '(Figure 4).', '',
          '| experiment | step | colour fraction | at initialization | same-label neighbours | '
          'training images searched |', '|---|---|---|---|---|---|', *rows, '']


def write_results_table(runs: Sequence[str], path: str, command: str = '',
                        note: str = '') -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    f.write(results_table(runs, command=command, note=note))
  return path


# ----------------------------------------------------------------------------------
# Command line.


def run_from_experiment(experiment, mesh) -> dict:
  """--mode=visualize: the figures of --workdir's checkpoint, or with --results the table."""
  options = experiment.visualize
  if options.results:
    return write_results(options)
  summary = run(experiment.model, experiment.data, mesh, experiment.run.workdir,
                batch_size=experiment.train.eval_batch, queries=options.queries,
                neighbours=options.neighbours, max_train_images=options.max_train_images,
                step=experiment.run.checkpoint_step, out_dir=options.figures_dir,
                seed=experiment.train.seed)
  print('\n'.join(summary_lines(summary)))
  return summary


def write_results(options) -> dict:
  """--results: docs/RESULTS.md from --runs (and their learning curves with --curves_path)."""
  command = ('python -m alexnet_jax.main --mode=visualize --results --runs=' +
             ','.join(options.runs))
  path = write_results_table(options.runs, options.results_path, command, options.results_note)
  print(f'Wrote {path}')
  written = {'results': path}
  if options.curves_path:
    from alexnet_jax.tools import figures  # pylint: disable=import-outside-toplevel
    names, workdirs = zip(*named_runs(options.runs, experiments()))
    written['curves'] = figures.learning_curves(workdirs, options.curves_path, names)
    print(f"Wrote {written['curves']}")
  return written
