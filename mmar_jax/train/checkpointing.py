"""Training checkpoints: one Orbax `CheckpointManager` holding the train state, the grain
iterator's state and a config snapshot per step, saved asynchronously, the last K kept.

Restoring walks back from the newest step: a step directory that Orbax cannot read (a corrupt
or truncated file) is reported by name and the one before it is used. Half-written saves never
become steps at all: Orbax writes into a temporary directory and renames it when complete,
and the manager removes the leftovers of a killed save (`cleanup_tmp_directories`).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from mmar_jax import configs
from mmar_jax.train.state import TrainState


def manager(directory: str | os.PathLike, train_config: ml_collections.ConfigDict, *, read_only: bool = False
            ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=train_config.keep_checkpoints, enable_async_checkpointing=True, create=not read_only,
      cleanup_tmp_directories=not read_only, read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "data", "config"))


def save(mngr: ocp.CheckpointManager, state: TrainState, data_iterator: grain.DatasetIterator,
         config: ml_collections.ConfigDict, *, force: bool = False) -> bool:
  """Starts an asynchronous save of `state` at its own step; returns whether one was started."""
  step = int(state.step)
  if step in mngr.all_steps():
    return False
  return mngr.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config.to_dict())))


def restore_latest(mngr: ocp.CheckpointManager, target: TrainState, data_iterator: grain.DatasetIterator | None
                   ) -> TrainState | None:
  """The newest readable step's state, placed as `target` (abstract arrays with shardings: any
  mesh works), with `data_iterator` moved to where that step left it. None when there is none."""
  for step in sorted(mngr.all_steps(), reverse=True):
    items = dict(state=ocp.args.StandardRestore(target))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - any unreadable step falls back to the previous one.
      logging.warning("checkpoint step %d in %s is unreadable (%s: %s); falling back to the previous step",
                      step, mngr.directory, type(e).__name__, e)
      print(f"warning: checkpoint step {step} in {mngr.directory} is unreadable ({type(e).__name__}); "
            "using the previous step")
      continue
    return restored["state"]
  return None


def saved_config(mngr: ocp.CheckpointManager, step: int | None = None) -> ml_collections.ConfigDict:
  """The config snapshot saved with `step` (default: the newest)."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  snapshot = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  return configs.from_dict(snapshot)


def load_params(workdir: str, step: int | None = None) -> tuple[Any, ml_collections.ConfigDict, int]:
  """(params, config, step) of a training run's checkpoint (default: the newest readable one).

  The params come back on the default device; only inference-sized models should go this way.
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir} has no checkpoints/ directory; is it a training --workdir?")
  mngr = manager(directory, ml_collections.ConfigDict({"keep_checkpoints": 1}), read_only=True)
  steps = sorted(mngr.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise FileNotFoundError(f"{directory} holds no checkpoint")
  for s in steps:
    try:
      restored = mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                          config=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - as in restore_latest.
      if step is not None:
        raise
      print(f"warning: checkpoint step {s} in {directory} is unreadable ({type(e).__name__}); using the previous step")
      continue
    return restored["state"]["params"], configs.from_dict(restored["config"]), s
  raise FileNotFoundError(f"no readable checkpoint in {directory}")
