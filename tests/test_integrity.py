"""Checkpoint digests: their formula, the same on every mesh, changed by any changed word."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from alexnet_jax import integrity
from tests import meshes


def _numpy_digest(array: np.ndarray) -> str:
  """The module docstring's sum, in Python integers: sum of word * (2 * position + 1)."""
  words = np.ascontiguousarray(array).view(np.uint32).reshape(-1)
  return f'{sum(int(w) * (2 * i + 1) for i, w in enumerate(words)) % 2**32:08x}'


def test_digests_follow_their_formula_for_every_dtype_and_find_non_finite_values():
  rng = np.random.default_rng(0)
  floats = rng.normal(size=(2, 3, 5)).astype(np.float32)
  ints = rng.integers(-2**31, 2**31, size=(7,), dtype=np.int64).astype(np.int32)
  halves = rng.normal(size=(4,)).astype(jnp.bfloat16)
  tree = {'w': floats, 'n': ints, 'h': halves, 's': np.float32(np.inf), 'e': np.zeros(0, np.float32)}
  digests, non_finite = integrity.summarize(jax.device_put(tree))
  assert digests['w'] == _numpy_digest(floats)
  assert digests['n'] == _numpy_digest(ints)
  assert digests['h'] == _numpy_digest(halves.view(np.uint16).astype(np.uint32))
  assert digests['e'] == '00000000'
  assert non_finite == ['s']


def test_a_digest_is_the_same_on_every_mesh_and_changes_with_any_word():
  values = np.random.default_rng(1).normal(size=(2, 64, 8)).astype(np.float32)
  expected = _numpy_digest(values)
  for shape, spec in [((1, 1), P()), ((1, 2), P('tower')), ((2, 2), P('data', None, 'tower'))]:
    placed = jax.device_put(values, NamedSharding(meshes.mesh(*shape), spec))
    assert integrity.summarize({'x': placed})[0]['x'] == expected
  for flat_index in (0, 517, values.size - 1):
    changed = values.copy().reshape(-1)
    changed.view(np.uint32)[flat_index] ^= 1 << 7     # one bit of one word
    assert integrity.summarize({'x': changed.reshape(values.shape)})[0]['x'] != expected
  swapped = values.copy().reshape(-1)
  swapped[[3, 4]] = swapped[[4, 3]]                   # the same words in another order
  assert integrity.summarize({'x': swapped.reshape(values.shape)})[0]['x'] != expected


def test_verify_names_the_arrays_that_differ_or_are_not_finite():
  tree = {'params': {'a': np.ones(3, np.float32), 'b': np.float32(np.nan)},
          'plateau': {'best': np.float32(np.inf)}}
  digests, _ = integrity.summarize(tree)
  assert integrity.verify(tree, digests, finite=()) is None
  assert 'NaN or inf in params/b' in integrity.verify(tree, digests, finite=('params/',))
  changed = dict(tree, params={**tree['params'], 'a': np.array([1, 1, 2], np.float32)})
  assert 'differ from the digests recorded at save time (params/a)' in integrity.verify(
      changed, digests, finite=())


def test_layout_differences_name_the_path_and_shapes():
  saved = integrity.layout({'a': jax.ShapeDtypeStruct((2, 3), jnp.float32),
                            'b': jax.ShapeDtypeStruct((), jnp.int32)})
  wanted = integrity.layout({'a': jax.ShapeDtypeStruct((2, 4), jnp.float32),
                             'c': jax.ShapeDtypeStruct((), jnp.int32)})
  assert integrity.layout_difference(saved, saved) is None
  assert integrity.layout_difference(saved, wanted) == (
      'c is not in the checkpoint; b is in the checkpoint but not in this state; '
      'a is float32[2, 3] there, float32[2, 4] here')
