"""Training checkpoints: one Orbax `CheckpointManager` whose steps have the layout of
mmar_jax/checkpoint.py (params, ema, train_state, data, config, run), saved asynchronously, the last K kept.

Resuming (`resume`) restores into an abstract target with this run's shardings, so any mesh and
any number of devices or processes can continue a run, and walks back from the newest step:
  - a step Orbax cannot read is named with its error; once an older step is read, every newer
    unreadable one is moved aside to checkpoints/corrupt/<step>-<time> (never deleted), so the
    recomputed step is saved under its own number again;
  - saves that never finished (Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and
    renames it when complete; the manager deletes the leftovers) are listed before the manager
    cleans them up (`unfinished_saves`) and named in the resume line;
  - checkpoints but none readable is an error naming each step and why (`NoReadableCheckpoint`),
    unless the run asks to start over;
  - the grain iterator's state is per process (process_<i>-of-<n>.json): at another process count
    it cannot be mapped, so every host's stream is rebuilt to start at record
    step * global_batch / processes of its slice of the shuffled order (`data_start`, kept in the
    run item so later resumes at that count rebuild the same stream), and the change is reported;
  - a step without the EMA item (written before EMA, or with config.train.ema_decay 0) resumes a
    run that keeps one with the EMA starting from the restored params, and says so.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from mmar_jax import checkpoint
from mmar_jax.checkpoint import CONFIG, DATA, EMA, PARAMS, RUN, TRAIN_STATE
from mmar_jax.train import ema as ema_lib
from mmar_jax.train.state import TrainState

CORRUPT = "corrupt"  # checkpoints/corrupt/<step>-<time>: unreadable steps, moved aside.
_TMP_STEP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


class NoReadableCheckpoint(ValueError):
  """The workdir has checkpoints and none of them can be read."""


def manager(directory: str | os.PathLike, train_config: ml_collections.ConfigDict, *, read_only: bool = False
            ) -> ocp.CheckpointManager:
  # A reader keeps and saves nothing; saying so up front spares Orbax's warnings that it overrode both.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else train_config.keep_checkpoints,
      save_interval_steps=0 if read_only else 1, enable_async_checkpointing=True, create=not read_only,
      cleanup_tmp_directories=not read_only, read_only=read_only)
  mngr = ocp.CheckpointManager(checkpoint.path_of(directory), options=options, item_names=checkpoint.TRAINING_ITEMS)
  # Orbax removes a previous run's unfinished saves in a thread that nothing awaits before the first
  # save: a run that stops sooner (bad data, a bad source) races the interpreter's exit, and the
  # thread prints a traceback after the one-line error. Awaited here, at the cost of a listing.
  getattr(mngr, "_maybe_await_cleanup_tmp_directory", lambda: None)()
  return mngr


def unfinished_saves(directory: str | os.PathLike) -> list[int]:
  """Steps whose save started and never finished; call it before `manager` (which removes them).

  Locally Orbax writes `<step>.orbax-checkpoint-tmp*` and renames it when complete; on GCS (no
  atomic rename) it writes `<step>/` and marks it complete with commit_success.txt.
  """
  directory = checkpoint.path_of(directory)
  if not directory.is_dir():
    return []
  steps = set()
  for p in directory.iterdir():
    if m := _TMP_STEP.match(p.name):
      steps.add(int(m.group(1)))
    elif p.name.isdigit() and os.fspath(p).startswith("gs://") and not (p / "commit_success.txt").exists():
      steps.add(int(p.name))
  return sorted(steps)


def mesh_shape(mesh) -> dict[str, int]:
  return {str(k): int(v) for k, v in mesh.shape.items()}


def run_info(mesh, global_batch: int, data_start: int) -> dict[str, Any]:
  """Where a step is written: the run item. `data_start` is the record of each host's slice its
  data stream started at (0 unless it was repositioned after a change of process count)."""
  return {"process_count": jax.process_count(), "device_count": jax.device_count(), "mesh": mesh_shape(mesh),
          "global_batch": global_batch, "data_start": data_start}


def save(mngr: ocp.CheckpointManager, state: TrainState, data_iterator: grain.DatasetIterator,
         config: ml_collections.ConfigDict, run: dict[str, Any], *, force: bool = False) -> bool:
  """Starts an asynchronous save of `state` at its own step; returns whether one was started."""
  step = int(state.step)
  if step in mngr.all_steps():
    return False
  items = {PARAMS: ocp.args.StandardSave(state.params),
           TRAIN_STATE: ocp.args.StandardSave(dict(step=state.step, opt_state=state.opt_state, rng=state.rng)),
           DATA: grain.checkpoint.CheckpointSave(data_iterator),
           CONFIG: ocp.args.JsonSave(snapshot(config)),
           RUN: ocp.args.JsonSave(run)}
  if state.ema is not None:
    items[EMA] = ocp.args.StandardSave(state.ema)
  return mngr.save(step, force=force, args=ocp.args.Composite(**items))


def snapshot(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as saved: the VAE reference made absolute and checked (a relative one would mean
  another directory wherever the checkpoint is opened)."""
  d = config.to_dict()
  vae = d["tokenizer"]["vae_checkpoint"]
  if vae:
    vae = os.fspath(checkpoint.path_of(vae))
    if d["tokenizer"]["kind"] == "kl16" and not epath.Path(vae).exists():
      raise FileNotFoundError(f"config.tokenizer.vae_checkpoint={d['tokenizer']['vae_checkpoint']!r}: {vae} does "
                              "not exist")
    d["tokenizer"]["vae_checkpoint"] = vae
  return d


@dataclasses.dataclass
class Resumed:
  state: TrainState
  data_iterator: Any
  step: int
  data_start: int
  lines: list[str]  # What to tell the user, one line each.


def resume(mngr: ocp.CheckpointManager, target: TrainState, make_iterator: Callable[[int], Any], *, mesh,
           global_batch: int, unfinished: list[int] = (), start_over: bool = False) -> Resumed | None:
  """The newest readable step restored into `target` (abstract arrays with this run's shardings),
  with a data iterator (`make_iterator(data_start)`) at its position; None when there is no step,
  or none readable and `start_over`. See the module docstring for what happens to the others."""
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    if unfinished and jax.process_index() == 0:
      print(f"starting from step 0: no finished checkpoint; the save{'s' if len(unfinished) > 1 else ''} of step "
            f"{', '.join(map(str, unfinished))} never finished")
    return None
  failures: list[tuple[int, str]] = []
  for step in steps:
    try:
      resumed = _restore_step(mngr, step, target, make_iterator, mesh=mesh, global_batch=global_batch)
    except Exception as e:  # noqa: BLE001 - any unreadable step falls back to the previous one.
      failures.append((step, f"{type(e).__name__}: {checkpoint._first_line(e)}"))
      print(f"warning: checkpoint step {step} in {mngr.directory} is unreadable ({type(e).__name__}); "
            "trying the previous step")
      continue
    moved = _move_aside(mngr, [s for s, _ in failures])
    lost = [s for s in unfinished if s > step]
    line = f"resumed from step {step}"
    if lost:
      line += f"; later save{'s' if len(lost) > 1 else ''} of step {', '.join(map(str, lost))} never finished"
    if moved:
      line += f"; unreadable step {', '.join(f'{s} (moved to {p})' for s, p in moved)}"
    resumed.lines.insert(0, line)
    return resumed
  reasons = "; ".join(f"step {s}: {why}" for s, why in failures)
  if not start_over:
    raise NoReadableCheckpoint(f"{mngr.directory} holds checkpoints but none is readable ({reasons}); nothing was "
                               "changed. Fix or remove them, or pass --start-over to move them aside and train "
                               "from step 0")
  moved = _move_aside(mngr, [s for s, _ in failures])
  print(f"starting over (--start-over): no readable checkpoint ({reasons}); moved aside: "
        + ", ".join(f"{s} -> {p}" for s, p in moved))
  return None


def _restore_step(mngr, step: int, target: TrainState, make_iterator, *, mesh, global_batch: int) -> Resumed:
  saved = mngr.restore(step, args=ocp.args.Composite(**{RUN: ocp.args.JsonRestore()}))[RUN]
  now = run_info(mesh, global_batch, 0)
  same_processes = saved["process_count"] == now["process_count"]
  items = {PARAMS: ocp.args.StandardRestore(target.params),
           TRAIN_STATE: ocp.args.StandardRestore(dict(step=target.step, opt_state=target.opt_state,
                                                      rng=target.rng))}
  lines = []
  with_ema = target.ema is not None and checkpoint.has_ema(epath.Path(mngr.directory) / str(step))
  if with_ema:
    items[EMA] = ocp.args.StandardRestore(target.ema)
  if same_processes:
    data_start = int(saved["data_start"])
    data_iterator = make_iterator(data_start)
    items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
  else:
    # Where the data stream would be after `step` global batches, counted in records of each host's slice.
    data_start = step * global_batch // now["process_count"]
    data_iterator = make_iterator(data_start)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  ts = restored[TRAIN_STATE]
  if with_ema:
    ema = restored[EMA]
  elif target.ema is not None:
    # A copy on the params' own shards (jnp.copy: the donated step must not see one buffer twice).
    ema = jax.tree.map(jnp.copy, ema_lib.like(restored[PARAMS], target.ema))
    lines.append(f"checkpoint step {step} holds no EMA of the params: the EMA (config.train.ema_decay) starts "
                 "from its params")
  else:
    ema = None
  state = TrainState(step=ts["step"], params=restored[PARAMS], opt_state=ts["opt_state"], rng=ts["rng"], ema=ema)
  changed = [f"{name} {_show(saved[key])} (now {_show(now[key])})" for name, key in
             (("processes", "process_count"), ("devices", "device_count"), ("mesh", "mesh")) if saved[key] != now[key]]
  if changed:
    if same_processes:
      meaning = "parameters, optimizer state, step, RNG and the data order restored exactly"
    else:
      meaning = (f"parameters, optimizer state, step and RNG restored exactly; the data iterator's per-process "
                 f"state does not map onto {now['process_count']} process(es), so each host's stream restarts at "
                 f"record {data_start} of its slice of the shuffled order (step x global batch / processes): the "
                 "record order from here differs from an unchanged run")
    lines.append(f"checkpoint step {step} was written with {', '.join(changed)}: {meaning}")
  return Resumed(state=state, data_iterator=data_iterator, step=step, data_start=data_start, lines=lines)


def _show(value) -> str:
  return ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def _move_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> list[tuple[int, str]]:
  """Renames each unreadable step to checkpoints/corrupt/<step>-<time> (process 0; the others
  wait for it); returns (step, new path) of each."""
  if not steps:
    return []
  directory = epath.Path(mngr.directory)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  moved = [(s, directory / CORRUPT / f"{s}-{stamp}") for s in steps]
  if jax.process_index() == 0:
    (directory / CORRUPT).mkdir(parents=True, exist_ok=True)
    for s, dest in moved:
      (directory / str(s)).rename(dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("mmar_jax: unreadable checkpoints moved aside")
  mngr.reload()
  return [(s, os.fspath(dest)) for s, dest in moved]
