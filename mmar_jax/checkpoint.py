"""Checkpoints: one Orbax layout for every writer, one loader for every reader.

A checkpoint step is an Orbax composite directory of items:
  params/       the model's parameters (StandardSave); restorable alone, onto any mesh
  ema/          training with config.train.ema_decay > 0: the EMA of the trainable params (the
                params tree pruned to them, train/ema.py); readers use it by default
  config/       a JSON snapshot of the full ml_collections config, read back through the schema
  train_state/  training only: {step, opt_state, rng}
  data/         training only: the grain iterator's state, one process_<i>-of-<n>.json a process
  run/          training only: JSON of where it was written (processes, devices, mesh, data origin)
A training workdir holds `checkpoints/<step>/` (an Orbax CheckpointManager, train/checkpointing.py),
init-from-hf writes its step 0 there, and import-hf writes one step directory by itself.

    params, config, step = load_params(path)   # a workdir, its checkpoints/, a step dir, an import-hf dir

restores the params item alone into an abstract target whose shapes come from the checkpoint's
metadata and whose shardings come from this process (its first device, or the shardings given),
never the saved ones: a checkpoint written by 8 devices or 2 processes opens on 1 device.

Every path goes through etils' epath (what Orbax itself uses), so `gs://` works as a local path does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from mmar_jax import configs
from mmar_jax.train import ema as ema_lib

# Orbax warns "Given directory is read only" for every read-only manager: reading is all evaluate,
# generate, describe and export do, so the warning says nothing to their users.
logging.getLogger("absl").addFilter(lambda record: not record.getMessage().startswith("Given directory is read only"))

PARAMS, EMA, CONFIG, TRAIN_STATE, DATA, RUN = "params", "ema", "config", "train_state", "data", "run"
TRAINING_ITEMS = (PARAMS, EMA, TRAIN_STATE, DATA, CONFIG, RUN)
WEIGHTS = ("ema", "raw")  # load_params(weights=...): the EMA (where a step has one) or the params as trained.
WEIGHTS_HELP = ("Which weights: ema (the trainable params' moving average, config.train.ema_decay) or raw (the "
                "params as trained); default: ema where the checkpoint holds it, else raw.")
CHECKPOINTS = "checkpoints"  # A training workdir's Orbax CheckpointManager directory.
TOKENIZER_DIR = "tokenizer"  # Beside checkpoints/: the tokenizer files, copied at the first save.
WHAT = ("a training --workdir (holding checkpoints/), its checkpoints/ directory, a step directory "
        "checkpoints/<step>, or an import-hf output")


def path_of(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath: absolute when local (a relative path means the current directory now)."""
  p = epath.Path(path)
  return p if _is_uri(p) else epath.Path(os.path.abspath(os.fspath(p)))


def _is_uri(p: epath.Path) -> bool:
  return "://" in os.fspath(p)


def is_step_dir(path: epath.Path) -> bool:
  """Whether `path` is one checkpoint step (any writer): it holds the params and config items."""
  return (path / PARAMS).is_dir() and (path / CONFIG).is_dir()


def save(path: str | os.PathLike, params: Any, config: ml_collections.ConfigDict) -> None:
  """Writes one step directory of `params` and `config` (import-hf); Orbax writes all or nothing."""
  path = path_of(path)
  if path.exists():
    raise FileExistsError(f"{path} exists; choose a new checkpoint directory")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(path, ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(params),
                                                  CONFIG: ocp.args.JsonSave(config.to_dict())}))


@dataclasses.dataclass(frozen=True)
class Located:
  root: epath.Path  # The workdir (or the import-hf directory): where tokenizer/ is looked for.
  steps_dir: epath.Path | None  # checkpoints/, when `path` was a training run.
  step_dir: epath.Path | None  # The step itself, when `path` named one.


def locate(path: str | os.PathLike) -> Located:
  """What `path` is: a workdir, its checkpoints/, a step directory, or an import-hf directory."""
  p = path_of(path)
  if p.name.isdigit() and p.parent.name == CHECKPOINTS and p.parent.is_dir() and not is_step_dir(p):
    raise FileNotFoundError(f"{p.parent} holds no step {p.name} (it holds steps {list_steps(p.parent)})")
  if not p.exists():
    raise FileNotFoundError(f"{path} does not exist (give {WHAT})")
  if is_step_dir(p):
    if p.parent.name == CHECKPOINTS:
      return Located(root=p.parent.parent, steps_dir=p.parent, step_dir=p)
    return Located(root=p, steps_dir=None, step_dir=p)
  if (p / CHECKPOINTS).is_dir():
    return Located(root=p, steps_dir=p / CHECKPOINTS, step_dir=None)
  if p.name == CHECKPOINTS and p.is_dir():
    return Located(root=p.parent, steps_dir=p, step_dir=None)
  raise FileNotFoundError(f"{path} is not an mmar_jax checkpoint (give {WHAT}; a step holds the Orbax items "
                          f"'{PARAMS}' and '{CONFIG}')")


def list_steps(steps_dir: epath.Path) -> list[int]:
  """The finished steps in a checkpoints/ directory, oldest first (Orbax's own listing)."""
  # A reader keeps and saves nothing; saying so up front spares Orbax's warnings that it overrode both.
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None, save_interval_steps=0,
                                         cleanup_tmp_directories=False)
  mngr = ocp.CheckpointManager(steps_dir, options=options)
  try:
    return sorted(mngr.all_steps())
  finally:
    mngr.close()


def load_config(path: str | os.PathLike, step: int | None = None) -> ml_collections.ConfigDict:
  """The config snapshot of `path` (any form `locate` accepts; default: the newest step)."""
  step_dir, _ = _step_dir(locate(path), step)
  return configs.from_dict(_restore(step_dir, {CONFIG: ocp.args.JsonRestore()})[CONFIG])


def has_ema(step_dir: epath.Path) -> bool:
  return (step_dir / EMA).is_dir()


def params_target(step_dir: epath.Path, shardings: Any = None, item: str = PARAMS) -> Any:
  """The params (or EMA) item's restore target: the saved shapes and dtypes, placed as this process says.

  `shardings`: None (this process's first device), one Sharding for every leaf, or a tree of them.
  """
  metadata = ocp.StandardCheckpointHandler().metadata(step_dir / item)
  metadata = getattr(metadata, "tree", metadata)
  if shardings is None:
    shardings = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=shardings), metadata)
  return jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), metadata, shardings)


def load_params(path: str | os.PathLike, step: int | None = None, *, shardings: Any = None,
                tokenizer: str | None = None, vae: str | None = None, need_vae: bool = True,
                weights: str | None = None) -> tuple[Any, ml_collections.ConfigDict, int]:
  """(params, config, step) of any checkpoint (a workdir, checkpoints/, a step, an import-hf dir).

  Without `step` the newest readable step is used (an unreadable one is named and skipped); a
  step directory is its own step. The config's tokenizer is the copy in the workdir when there is
  one; `tokenizer` and `vae` override the stored tokenizer and VAE references. Params land on
  this process's first device unless `shardings` says otherwise (see `params_target`).
  `need_vae=False` (export) skips checking that the stored VAE reference exists here.
  `weights`: None the EMA where the step has one (else the params), "ema" the EMA (an error
  without one), "raw" the params as trained.
  """
  if weights is not None and weights not in WEIGHTS:
    raise ValueError(f"--weights={weights!r}: give one of {', '.join(WEIGHTS)}")
  located = locate(path)
  if located.step_dir is not None and step is not None and located.step_dir.name.isdigit() \
     and int(located.step_dir.name) != step:
    raise ValueError(f"{path} is step {int(located.step_dir.name)} but --step={step}: give one of them")
  candidates = [located.step_dir] if located.step_dir is not None else None
  if candidates is None:
    steps = list_steps(located.steps_dir)
    if not steps:
      raise FileNotFoundError(f"{located.steps_dir} holds no checkpoint (no finished step)")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"{located.steps_dir} holds no step {step} (it holds steps {steps})")
      steps = [step]  # An explicit step is read as asked: no falling back.
    candidates = [located.steps_dir / str(s) for s in reversed(steps)]
  failures = []
  for step_dir in candidates:
    try:
      items = {PARAMS: ocp.args.StandardRestore(params_target(step_dir, shardings)), CONFIG: ocp.args.JsonRestore()}
      averaged = weights != "raw" and has_ema(step_dir)
      if averaged:
        # The EMA's leaves are the params'; one tree of shardings covers both (pruned for the EMA).
        ema_shardings = shardings if shardings is None or isinstance(shardings, jax.sharding.Sharding) \
            else ema_lib.like(shardings, ocp.StandardCheckpointHandler().metadata(step_dir / EMA).tree)
        items[EMA] = ocp.args.StandardRestore(params_target(step_dir, ema_shardings, EMA))
      restored = _restore(step_dir, items)
    except Exception as e:  # noqa: BLE001 - an unreadable step is named; the one before it is tried.
      if len(candidates) == 1:
        raise ValueError(f"checkpoint {step_dir} is unreadable ({type(e).__name__}: {e})") from None
      failures.append(f"step {step_dir.name}: {type(e).__name__}: {_first_line(e)}")
      print(f"warning: checkpoint step {step_dir.name} in {step_dir.parent} is unreadable ({type(e).__name__}); "
            "using the previous step")
      continue
    config = resolve_assets(configs.from_dict(restored[CONFIG]), located.root, tokenizer=tokenizer, vae=vae,
                            need_vae=need_vae)
    number = int(step_dir.name) if step_dir.name.isdigit() else 0
    if weights == "ema" and not averaged:
      raise ValueError(f"--weights=ema: checkpoint {step_dir} holds no EMA (trained with config.train.ema_decay=0, "
                       "or written by import-hf); use --weights=raw")
    params = ema_lib.merge(restored[PARAMS], restored[EMA]) if averaged else restored[PARAMS]
    return params, config, number
  raise ValueError(f"no readable checkpoint in {located.steps_dir}: " + "; ".join(failures))


def resolve_assets(config: ml_collections.ConfigDict, root: epath.Path, *, tokenizer: str | None = None,
                   vae: str | None = None, need_vae: bool = True) -> ml_collections.ConfigDict:
  """`config` with its tokenizer and VAE references pointing where they are now.

  The tokenizer: `tokenizer` if given, else the copy in `root/tokenizer/` if there is one, else as
  stored. The VAE (kl16 only): `vae` if given, else as stored (an absolute path, checked here).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  copied = root / TOKENIZER_DIR
  if tokenizer:
    config.data.tokenizer = tokenizer
  elif (copied / "tokenizer.json").exists():
    config.data.tokenizer = os.fspath(copied)
  if vae:
    config.tokenizer.vae_checkpoint = vae
  if need_vae and config.tokenizer.kind == "kl16" and config.tokenizer.vae_checkpoint:
    where = config.tokenizer.vae_checkpoint
    if not epath.Path(where).exists():
      raise FileNotFoundError(f"config.tokenizer.vae_checkpoint={where!r} (stored in the checkpoint) does not "
                              "exist here; give --vae, the VAE's path on this machine")
  return config


def _step_dir(located: Located, step: int | None) -> tuple[epath.Path, int]:
  if located.step_dir is not None:
    name = located.step_dir.name
    return located.step_dir, int(name) if name.isdigit() else 0
  steps = list_steps(located.steps_dir)
  if not steps:
    raise FileNotFoundError(f"{located.steps_dir} holds no checkpoint (no finished step)")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{located.steps_dir} holds no step {step} (it holds steps {steps})")
  return located.steps_dir / str(step), step


def _restore(step_dir: epath.Path, items: dict[str, Any]) -> ocp.args.Composite:  # Read by item name, as a mapping.
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    return checkpointer.restore(step_dir, ocp.args.Composite(**items))


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else ""


def load(path: str | os.PathLike, shardings: Any = None) -> tuple[Any, ml_collections.ConfigDict]:
  """(params, config) of `path`, as `load_params` reads it (kept for callers of the old two-item form)."""
  params, config, _ = load_params(path, shardings=shardings)
  return params, config
