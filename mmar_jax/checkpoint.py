"""Orbax checkpoints of parameters with the config they belong to, saved side by side.

A checkpoint directory holds two Orbax items: `params` (the pytree, restorable straight onto a
mesh's shardings) and `config` (a JSON snapshot of the full ml_collections config, read back
through the schema so that a stale or foreign snapshot fails by field name).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from mmar_jax import configs


def save(path: str | os.PathLike, params: Any, config: ml_collections.ConfigDict) -> None:
  """Writes `params` and `config` to `path` (Orbax writes atomically: all or nothing)."""
  path = Path(path).absolute()
  if path.exists():
    raise FileExistsError(f"{path} exists; choose a new checkpoint directory")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(path, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                               config=ocp.args.JsonSave(config.to_dict())))


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  path = Path(path).absolute()
  _check_is_checkpoint(path)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    snapshot = checkpointer.restore(path, ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  return configs.from_dict(snapshot)


def load(path: str | os.PathLike, shardings: Any = None) -> tuple[Any, ml_collections.ConfigDict]:
  """Restores (params, config). With `shardings` (a tree of NamedShardings matching params),
  each parameter is read straight onto its shards; otherwise onto the default device."""
  path = Path(path).absolute()
  config = load_config(path)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    if shardings is None:
      restored = checkpointer.restore(path, ocp.args.Composite(params=ocp.args.StandardRestore()))
    else:
      metadata = checkpointer.metadata(path).item_metadata["params"]
      target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), metadata, shardings)
      restored = checkpointer.restore(path, ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  return restored["params"], config


def _check_is_checkpoint(path: Path) -> None:
  if not (path / "params").is_dir() or not (path / "config").is_dir():
    raise FileNotFoundError(f"{path} is not an mmar_jax checkpoint (expected the Orbax items 'params' and 'config')")
