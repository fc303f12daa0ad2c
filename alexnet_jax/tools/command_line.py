"""What the tools' own command lines share: the net's flags, named and defaulted as main's,
and a parser whose errors are one line."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from alexnet_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class NetOptions:
  """The net's flags; a tool's Options add their own after these."""
  towers: int = config_lib.ModelConfig.towers
  width: float = config_lib.ModelConfig.width
  image_size: int = config_lib.ModelConfig.image_size
  num_classes: int = config_lib.ModelConfig.num_classes

  def model_config(self) -> config_lib.ModelConfig:
    config = config_lib.ModelConfig(towers=self.towers, width=self.width,
                                    image_size=self.image_size, num_classes=self.num_classes)
    config.validate()
    return config


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    print(f'{self.prog}: error: {message}', file=sys.stderr)
    sys.exit(2)


def parse(options_class, command: str, description: str, argv):
  """An options_class (a dataclass) from argv: one flag per field, typed by its default."""
  parser = _Parser(prog=command, description=description)
  for field in dataclasses.fields(options_class):
    parser.add_argument(f'--{field.name}', type=type(field.default), default=field.default)
  return options_class(**vars(parser.parse_args(argv)))
