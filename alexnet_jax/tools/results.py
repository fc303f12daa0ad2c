"""The results table (docs/RESULTS.md): the paper's errors beside those of the runs made.

Each run's newest eval/<split>_step<N>[_crops<C>].json, and its Figure 3/4 statistics where
its figures' summary.json exists (visualize.py writes them).

  python -m alexnet_jax.main --mode=visualize --results --runs=[EXPERIMENT=]WORKDIR,...
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

from alexnet_jax import flags as flags_lib
from alexnet_jax.tools import figures

ROOT = flags_lib.ROOT
SUMMARY = 'summary.json'  # of a run's figures (visualize.py)


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


def write_results(options) -> dict:
  """--results: docs/RESULTS.md from --runs (and their learning curves with --curves_path)."""
  command = ('python -m alexnet_jax.main --mode=visualize --results --runs=' +
             ','.join(options.runs))
  path = write_results_table(options.runs, options.results_path, command, options.results_note)
  print(f'Wrote {path}')
  written = {'results': path}
  if options.curves_path:
    names, workdirs = zip(*named_runs(options.runs, experiments()))
    written['curves'] = figures.learning_curves(workdirs, options.curves_path, names)
    print(f"Wrote {written['curves']}")
  return written
