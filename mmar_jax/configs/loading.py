"""Loading a config: a preset file with command-line style overrides, or a checkpoint's JSON snapshot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from mmar_jax.configs.schema import DEFAULT_LOGICAL_AXIS_RULES, base_config
from mmar_jax.configs.validation import ConfigError, validate


def load_config(path: str, overrides: Sequence[str] = (), *, num_devices: int | None = None):
  """Loads `path`'s get_config() with `overrides` like 'model.num_layers=4', then validates.

  Parsing goes through ml_collections' own config flag, so the command line and this function
  accept exactly the same syntax.
  """
  argv = ["mmar-jax", f"--config={path}"] + [f"--config.{o.removeprefix('--config.')}" for o in overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    raise ConfigError(f"bad config override in {argv[1:]}: {e}") from e
  config = flag_values.config
  validate(config, num_devices=num_devices)
  return config



def from_dict(snapshot: dict) -> ml_collections.ConfigDict:
  """Rebuilds a config from a JSON snapshot through the schema: unknown fields fail by name,
  lists become tuples where the schema has tuples, and the result is validated."""
  config = base_config()

  def assign(node: ml_collections.ConfigDict, values: dict, prefix: str):
    for key, value in values.items():
      if key not in node:
        raise ConfigError(f"config.{prefix}{key} in the snapshot is not a field of this version's schema")
      if isinstance(node[key], ml_collections.ConfigDict):
        assign(node[key], value, f"{prefix}{key}.")
      elif isinstance(node[key], tuple):
        node[key] = _as_tuples(value)
      else:
        node[key] = value

  assign(config, snapshot, "")
  # A run from before held-out combinations trained on every triple: it holds none out.
  if "synthetic_held_out_modulus" not in snapshot.get("data", {}):
    config.data.synthetic_held_out_modulus = 0
  # A snapshot written before a logical axis existed has no rule for it: that axis gets the
  # schema's rule, so older checkpoints still open.
  named = {name for name, _ in config.mesh.logical_axis_rules}
  config.mesh.logical_axis_rules = tuple(config.mesh.logical_axis_rules) + tuple(
      rule for rule in DEFAULT_LOGICAL_AXIS_RULES if rule[0] not in named)
  validate(config)
  return config


def _as_tuples(value):
  return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def with_values(values: Mapping[str, Any], base: ml_collections.ConfigDict | None = None
                ) -> ml_collections.ConfigDict:
  """A copy of `base` (default: the schema's) with each dotted path of `values` set, unvalidated:
  `{"model.hidden_size": 64}`. A path the schema does not have fails by name."""
  config = (base or base_config()).copy_and_resolve_references()
  for path, value in dict(values).items():
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
      node = node[name] if name in node else None
      if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"config.{path} is not a field of the schema")
    if leaf not in node:
      raise ConfigError(f"config.{path} is not a field of the schema")
    node[leaf] = value
  return config
