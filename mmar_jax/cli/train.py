"""mmar-jax train: train (or resume) a model from a config; see mmar_jax/train/loop.py.

Run the same command on every process of a multi-host job (launch/ has scripts for TPU pods,
SLURM and local processes); train/distributed.py says how a process finds the others. Process 0
prints one start-up line: processes, local and global devices, the mesh, the global batch.
A multi-process run trains in a child of a small supervisor (train/supervisor.py), so that a lost
process ends the others with one line (exit 75) instead of jax's fatal abort.
"""

from __future__ import annotations

import os
import sys
import time

import jax
from absl import flags, logging
from ml_collections import config_flags

from mmar_jax import checkpoint, configs
from mmar_jax.convert import hf_import
from mmar_jax.data import pipeline
from mmar_jax.data.corrupt import CorruptDataError
from mmar_jax.train import distributed, loop, supervisor
from mmar_jax.train import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py; --config.x.y=v "
                                          "overrides a field.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints/, tensorboard/, eval/.", required=True)
_RESUME = flags.DEFINE_bool("resume", True, "Continue from the newest checkpoint in --workdir when there is one "
                            "(--noresume starts over, refusing a directory that has checkpoints).")
_START_OVER = flags.DEFINE_bool("start-over", False, "When --workdir has checkpoints and none of them is readable, "
                                "move them aside (checkpoints/corrupt/) and train from step 0 instead of stopping "
                                "with an error naming each.")
_COORDINATOR = flags.DEFINE_string("coordinator-address", None, "host:port of process 0 (multi-process runs "
                                   "outside TPU pods and SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num-processes", None, "Processes in the job (with --coordinator-address).")
_PROCESS_ID = flags.DEFINE_integer("process-id", None, "This process's index (with --coordinator-address).")
_STARTUP_ONLY = flags.DEFINE_bool("startup-only", False, "Join the job, check the mesh against the devices, print "
                                  "the start-up line and exit without training (a pod's or cluster's smoke test).")


# The model fields that fix the parameters' shapes or what they compute (max_seq_len is only a limit).
MODEL_FIELDS = tuple(f for f in hf_import.ARCHITECTURE_FIELDS if f != "max_seq_len") + ("lora.rank", "lora.targets")


def _model_value(model, field: str):
  if field == "head_dim":
    return configs.head_dim(model)  # 0 means hidden_size // num_heads: compare what it means.
  section, _, name = field.rpartition(".")
  return (model[section] if section else model)[name]


def match_checkpoint_model(config, workdir: str, steps_dir) -> None:
  """Resuming needs --config's model to be the checkpoint's (an init-from-hf workdir's is config.json's):
  a field that differs is named with the flag to pass, instead of every step reading as unreadable.
  An unset hf_vocab_size is taken from the checkpoint, so that export-hf still writes HF's rows."""
  if not steps_dir.is_dir():
    return
  try:
    saved = checkpoint.load_config(workdir)
  except Exception:  # pylint: disable=broad-except  # No step, or an unreadable newest: the restore says which.
    return
  differ = [f for f in MODEL_FIELDS if _model_value(config.model, f) != _model_value(saved.model, f)]
  if differ:
    wanted = " ".join(f"--config.model.{f}={_model_value(saved.model, f)}" for f in differ)
    raise configs.ConfigError(f"--workdir={workdir} holds a model other than --config's ("
                              + ", ".join(f"config.model.{f}={_model_value(config.model, f)!r}, the checkpoint's "
                                          f"{_model_value(saved.model, f)!r}" for f in differ)
                              + f"); to resume it pass {wanted}")
  if not config.model.hf_vocab_size:
    config.model.hf_vocab_size = saved.model.hf_vocab_size


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise flags.ValidationError("--config is required, e.g. --config=configs/demo.py")
  plan = distributed.plan(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if plan.kind != "single" and not supervisor.is_child():
    sys.exit(supervisor.run(sys.argv[1:], _WORKDIR.value, plan.process_id))
  distributed.initialize(plan, config.distributed)
  configs.validate(config, num_devices=jax.device_count())  # A mesh the devices contradict fails naming both.
  mesh = mesh_lib.make_mesh(config)
  pipeline.host_batch_size(pipeline.PipelineConfig.from_config(config), jax.process_count())
  if jax.process_index() == 0:
    print(distributed.startup_line(mesh, config.data.batch_size), flush=True)
  if _STARTUP_ONLY.value:
    return
  workdir = _WORKDIR.value
  steps_dir = checkpoint.path_of(workdir) / checkpoint.CHECKPOINTS
  if not _RESUME.value and steps_dir.is_dir():
    steps = checkpoint.list_steps(steps_dir)
    if steps:
      raise FileExistsError(f"--noresume but {steps_dir} holds steps {steps}; choose a new --workdir")
  if _RESUME.value:
    match_checkpoint_model(config, workdir, steps_dir)
  stopped = None
  try:
    result = loop.train(config, workdir, resume=_RESUME.value, start_over=_START_OVER.value,
                        eval_fn=loop.default_eval_fn(config, workdir))
  except CorruptDataError as e:  # The data are at fault: bad input (exit 2); the message names the last bad record.
    stopped = (str(e), 2)
  except loop.TrainingDiverged as e:
    stopped = (str(e), 1)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    # A collective with a dead process failed. jax's runtime will end this process once the
    # coordination service names the lost one (within the heartbeat timeout); the supervisor
    # turns that into one line. Waiting here keeps a traceback from coming first.
    logging.error("distributed: a collective failed; waiting for jax to name the lost process: %s",
                  str(e).splitlines()[0] if str(e) else type(e).__name__)
    time.sleep(config.distributed.heartbeat_timeout_s + 30)
    os._exit(supervisor.LOST_EXIT)
  if stopped is not None:
    # Exits outside the except clause: the exception's traceback holds rows still in grain's shared
    # memory, which kept alive to the interpreter's exit would be reported as leaked.
    pipeline.release_shared_memory()
    print(f"mmar-jax train: stopped: {stopped[0]}", file=sys.stderr)
    sys.exit(stopped[1])
  messages = {"done": f"finished at step {result.step}",
              "time_limit": f"stopped at step {result.step} (config.train.time_limit_s); rerun to continue",
              "preempted": f"preempted (SIGTERM) at step {result.step}; checkpoint saved, rerun to resume"}
  if jax.process_index() == 0:
    print(f"mmar-jax train: {messages[result.reason]}; checkpoints in {workdir}/checkpoints")
