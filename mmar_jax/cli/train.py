"""mmar-jax train: train (or resume) a model from a config; see mmar_jax/train/loop.py.

Run the same command on every process of a multi-host job; `jax.distributed` starts up from
the environment (TPU pod, SLURM) or the --coordinator-address flags.
"""

from __future__ import annotations

import sys

import jax
from absl import flags
from ml_collections import config_flags

from mmar_jax import checkpoint, configs
from mmar_jax.data.corrupt import CorruptDataError
from mmar_jax.train import distributed, loop

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


def main(argv):
  del argv
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  if config is None:
    raise flags.ValidationError("--config is required, e.g. --config=configs/demo.py")
  configs.validate(config, num_devices=jax.device_count())
  workdir = _WORKDIR.value
  steps_dir = checkpoint.path_of(workdir) / checkpoint.CHECKPOINTS
  if not _RESUME.value and steps_dir.is_dir():
    steps = checkpoint.list_steps(steps_dir)
    if steps:
      raise FileExistsError(f"--noresume but {steps_dir} holds steps {steps}; choose a new --workdir")
  try:
    result = loop.train(config, workdir, resume=_RESUME.value, start_over=_START_OVER.value,
                        eval_fn=loop.default_eval_fn(config, workdir))
  except (loop.TrainingDiverged, CorruptDataError) as e:
    print(f"mmar-jax train: stopped: {e}", file=sys.stderr)
    sys.exit(1)
  messages = {"done": f"finished at step {result.step}",
              "time_limit": f"stopped at step {result.step} (config.train.time_limit_s); rerun to continue",
              "preempted": f"preempted (SIGTERM) at step {result.step}; checkpoint saved, rerun to resume"}
  if jax.process_index() == 0:
    print(f"mmar-jax train: {messages[result.reason]}; checkpoints in {workdir}/checkpoints")
