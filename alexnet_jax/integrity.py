"""What a checkpoint must hold: its arrays' layout, and a digest of each array.

A digest is the sum, modulo 2**32, of an array's 32-bit words each multiplied by the odd
number 2 * (its position) + 1: any one changed word changes it (an odd multiplier is
invertible modulo 2**32), and random damage (overwritten or zeroed bytes) goes unseen
with a chance of 2**-32. It detects corruption, not tampering. It is computed by XLA where
the array lives, sharded or not, in integer arithmetic that wraps around: the same values
give the same digest on any mesh and in any number of processes, for one read of the
state (benchmarks/checkpoint_digest.py measures it next to the save).
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def path_name(path) -> str:
  """'params/conv1/kernel' for a key path of jax.tree_util."""
  parts = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def layout(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{path: (shape, dtype name)} of every array (or ShapeDtypeStruct, or orbax metadata) leaf."""
  return {path_name(path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def layout_difference(saved: dict, wanted: dict) -> str | None:
  """The first few differences between two layouts, or None if they are equal."""
  differences = [f'{path} is not in the checkpoint' for path in sorted(set(wanted) - set(saved))]
  differences += [f'{path} is in the checkpoint but not in this state'
                  for path in sorted(set(saved) - set(wanted))]
  differences += [f'{path} is {saved[path][1]}{list(saved[path][0])} there, '
                  f'{wanted[path][1]}{list(wanted[path][0])} here'
                  for path in sorted(set(saved) & set(wanted)) if saved[path] != wanted[path]]
  if not differences:
    return None
  more = f' (and {len(differences) - 3} more)' if len(differences) > 3 else ''
  return '; '.join(differences[:3]) + more


def _words(x: jax.Array) -> jax.Array:
  """The bits of x as a flat uint32 array (narrower types widened, wider ones split)."""
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = jnp.dtype(x.dtype).itemsize
  if size >= 4:
    return lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  narrow = {1: jnp.uint8, 2: jnp.uint16}[size]
  return lax.bitcast_convert_type(x, narrow).reshape(-1).astype(jnp.uint32)


def _leaf_digest(x: jax.Array) -> jax.Array:
  words = _words(x)
  return jnp.sum(words * (2 * lax.iota(jnp.uint32, words.size) + 1), dtype=jnp.uint32)


def _all_finite(x: jax.Array) -> jax.Array:
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.all(jnp.isfinite(x))
  return jnp.array(True)


@functools.cache
def _compiled(replicated, finite: bool):
  """One jitted pass over all leaves; results replicated so every process can read them."""
  def run(leaves):
    digests = jnp.stack([_leaf_digest(x) for x in leaves])
    return digests, jnp.stack([_all_finite(x) for x in leaves]) if finite else None
  return jax.jit(run, out_shardings=replicated)


def _replicated(leaves):
  sharding = getattr(leaves[0], 'sharding', None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.P())
  return None


def _summary(tree, finite: bool):
  paths, leaves = zip(*[(path_name(p), leaf)
                        for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]])
  digests, finite = jax.device_get(_compiled(_replicated(leaves), finite)(list(leaves)))
  return ({path: f'{int(digest):08x}' for path, digest in zip(paths, digests)},
          [] if finite is None else [path for path, ok in zip(paths, finite) if not ok])


def digests(tree) -> dict[str, str]:
  """{path: digest as 8 hex digits} of every array: what a save records."""
  return _summary(tree, finite=False)[0]


def summarize(tree) -> tuple[dict[str, str], list[str]]:
  """(digests, [paths of float arrays holding NaN or inf]): what a restore checks."""
  return _summary(tree, finite=True)


def verify(tree, expected: dict[str, str] | None, finite: tuple[str, ...] = ('',)) -> str | None:
  """Why tree is not what was saved (a digest differs, or values are not finite), or None.

  Arrays whose paths start with one of `finite` must hold finite values. expected None
  (a checkpoint written before digests were recorded) checks finiteness only.
  """
  digests, non_finite = summarize(tree)
  non_finite = [path for path in non_finite if path.startswith(finite)]
  if expected is not None:
    changed = [path for path, digest in digests.items() if expected.get(path) != digest]
    if changed:
      return (f'{len(changed)} array(s) differ from the digests recorded at save time '
              f'({", ".join(changed[:3])}{", ..." if len(changed) > 3 else ""})')
  if non_finite:
    return (f'it holds NaN or inf in {", ".join(non_finite[:3])}'
            f'{", ..." if len(non_finite) > 3 else ""}')
  return None
