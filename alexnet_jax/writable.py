"""Whether a directory a run writes into can be written: checked before any long work."""

from __future__ import annotations

import os
import tempfile

from alexnet_jax.config import UserError


class NotWritableError(UserError):
  """A directory the run must write into cannot be written."""


def check_writable(directory: str, flag: str = '--workdir') -> None:
  """Creates directory if needed and a file in it (removed again); NotWritableError if not."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix='.write_check_'):
      pass
  except OSError as error:
    raise NotWritableError(f'{flag}={directory} cannot be written ({error.strerror}): the run '
                           'writes its checkpoints, metrics or figures there. Choose a '
                           'writable directory.') from None
