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
  # A reader keeps and saves nothing; saying so up front spares Orbax's warnings that it overrode both.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else train_config.keep_checkpoints,
      save_interval_steps=0 if read_only else 1, enable_async_checkpointing=True, create=not read_only,
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


def _restore_newest_readable(mngr: ocp.CheckpointManager, steps, args: ocp.args.Composite):
  """(step, restored items) of the first of `steps` that Orbax can read; an unreadable step is
  named in a warning and the next one tried. None when none can be read."""
  for step in steps:
    try:
      return step, mngr.restore(step, args=args)
    except Exception as e:  # noqa: BLE001 - any unreadable step falls back to the previous one.
      logging.warning("checkpoint step %d in %s is unreadable (%s: %s); falling back to the previous step",
                      step, mngr.directory, type(e).__name__, e)
      print(f"warning: checkpoint step {step} in {mngr.directory} is unreadable ({type(e).__name__}); "
            "using the previous step")
  return None


def restore_latest(mngr: ocp.CheckpointManager, target: TrainState, data_iterator: grain.DatasetIterator | None
                   ) -> TrainState | None:
  """The newest readable step's state, placed as `target` (abstract arrays with shardings: any
  mesh works), with `data_iterator` moved to where that step left it. None when there is none."""
  items = dict(state=ocp.args.StandardRestore(target))
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  found = _restore_newest_readable(mngr, sorted(mngr.all_steps(), reverse=True), ocp.args.Composite(**items))
  return None if found is None else found[1]["state"]


def load_params(workdir: str, step: int | None = None) -> tuple[Any, ml_collections.ConfigDict, int]:
  """(params, config, step) of a training run's checkpoint (default: the newest readable one).

  The params come back on the default device; only inference-sized models should go this way.
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir} has no checkpoints/ directory; is it a training --workdir?")
  mngr = manager(directory, ml_collections.ConfigDict({"keep_checkpoints": 1}), read_only=True)
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"{directory} holds no checkpoint")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"{directory} holds no step {step} (it holds steps {sorted(steps)})")
  args = ocp.args.Composite(state=ocp.args.StandardRestore(), config=ocp.args.JsonRestore())
  if step is not None:  # An explicit step is read as asked: no falling back.
    restored = mngr.restore(step, args=args)
  else:
    found = _restore_newest_readable(mngr, steps, args)
    if found is None:
      raise FileNotFoundError(f"no readable checkpoint in {directory}")
    step, restored = found
  return restored["state"]["params"], configs.from_dict(restored["config"]), step
