"""What a run reads: the store of squares (--store=jpeg|raw) or the full-size source dataset.

The one place that chooses between them. A run checks that its input can be read or made
(check_sources), prepares what is missing (prepare: the source, then the store of its
squares), opens what it reads (builder) and asks its facts (facts). Below this module,
tfds_data.py owns the source dataset and square_store.py the store.
"""

from __future__ import annotations

from alexnet_jax.config import DataConfig
from alexnet_jax.data import square_store
from alexnet_jax.data import tfds_data


def store_ready(cfg: DataConfig) -> bool:
  return cfg.store != 'none' and square_store.is_prepared(cfg)


def check_sources(cfg: DataConfig) -> None:
  """MissingDataError, before any long work, if the input can be neither read nor made."""
  if not store_ready(cfg):  # a prepared store needs no source
    tfds_data.check_sources(cfg)


def prepare(cfg: DataConfig, repair: bool = False) -> list[str]:
  """Prepares the source dataset and the store (unless store='none'), if not there yet.

  A store that is there but damaged stops with one line (DamagedStoreError), unless
  `repair` (--mode=prepare): then it is checked record by record and prepared again if
  damaged. Returns the source files the source builder skipped.
  """
  if cfg.store == 'none':
    return tfds_data.prepare(cfg)
  square_store.prepare(cfg, repair)  # and its source, if the store is to be written
  return []


def check_store(cfg: DataConfig) -> None:
  """MissingStoreError (one line naming the command that prepares it) unless it is there."""
  if cfg.store != 'none':
    square_store.open_store(cfg)


def builder(cfg: DataConfig):
  """The prepared TFDS builder the run reads: the store of squares, or the source."""
  return tfds_data.prepared_builder(cfg) if cfg.store == 'none' else square_store.open_store(cfg)


def facts(cfg: DataConfig) -> tfds_data.Facts:
  """Classes and split sizes: of the store if it is prepared, else of the source (the same)."""
  return tfds_data.facts(cfg, square_store.open_store(cfg) if store_ready(cfg) else None)
