"""What a trained net learned: the paper's Figures 3 and 4, and its learning curves.

Figures of one checkpoint, into WORKDIR/figures/ (or --figures_dir):
  conv1_kernels.png     Figure 3: the first-layer kernels, tower 1 above tower 2 (each
                        labelled), each min-max normalized; with each tower's colour
                        fraction (below).
  nearest_neighbours.png  Figure 4: query images of the eval split (first column) and the
                        training images nearest to them in fc7 space.
  learning_curves.png   loss, top-1/top-5 error and learning rate from metrics.jsonl.
  summary.json          the step, the colour statistics and the neighbours found.

  python -m alexnet_jax.main --mode=visualize --flagfile=experiments/visualize.flags

The results table of several runs is results.py's.

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
import json
import os
from typing import Iterator

import jax
import numpy as np

from alexnet_jax import device_augment
from alexnet_jax import parallel
from alexnet_jax import train
from alexnet_jax.config import UserError
from alexnet_jax.data import input_pipeline
from alexnet_jax.data import mean_image
from alexnet_jax.tools import figures
from alexnet_jax.tools import results

CHANCE_COLOR_FRACTION = 2 / 3


# ----------------------------------------------------------------------------------
# Figure 3: first-layer kernels.


def color_fraction(kernels: np.ndarray) -> np.ndarray:
  """Colour fraction (module docstring) of each kernel: (..., k, k, 3, C) -> (..., C)."""
  w = np.asarray(kernels, np.float64)
  grey = w.sum(axis=-2) / np.sqrt(3)                         # w . g at every pixel
  total = np.square(w).sum(axis=(-4, -3, -2))
  colour = total - np.square(grey).sum(axis=(-3, -2))
  return np.where(total > 0, colour / np.where(total > 0, total, 1.0), 0.0)


def kernel_figure(params, path: str, bgr: bool = False) -> list[dict]:
  """Writes Figure 3 of params' conv1 to path; returns each tower's colour fractions.

  bgr: the net reads B, G, R (Caffe's input convention): its kernels are drawn in R, G, B.
  """
  kernels = np.asarray(jax.device_get(params['conv1']['kernel']))  # (towers, k, k, 3, C)
  kernels = kernels[..., ::-1, :] if bgr else kernels
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
  if jax.process_count() > 1:
    raise UserError('visualize runs on one host: start it as a single process.')
  out_dir = out_dir or os.path.join(workdir, 'figures')
  step, params = train.restore_params(model_config, mesh, workdir, step)
  # Centre crops: the neighbours are searched among un-augmented training images.
  normalizer = mean_image.normalizer_for(dataclasses.replace(data_config, eval_crops=1),
                                         workdir)
  summary = {'workdir': workdir, 'step': step,
             'chance_color_fraction': CHANCE_COLOR_FRACTION,
             'towers': kernel_figure(params, os.path.join(out_dir, 'conv1_kernels.png'),
                                     bgr=model_config.input_convention == 'caffe')}
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
  with open(os.path.join(out_dir, results.SUMMARY), 'w') as f:
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
# Command line.


def run_from_experiment(experiment, mesh) -> dict:
  """--mode=visualize: the figures of --workdir's checkpoint, and what they show."""
  options = experiment.visualize
  summary = run(experiment.model, experiment.data, mesh, experiment.run.workdir,
                batch_size=experiment.train.eval_batch, queries=options.queries,
                neighbours=options.neighbours, max_train_images=options.max_train_images,
                step=experiment.run.checkpoint_step, out_dir=options.figures_dir,
                seed=experiment.train.seed)
  print('\n'.join(summary_lines(summary)))
  return summary
