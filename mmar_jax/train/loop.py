"""The training loop: sharded state, the jitted step, checkpoints, metrics, evaluation, signals.

`train(config, workdir)` is the whole job on one CPU, one GPU or a pod: every process runs it
with the same config, feeds its own slice of the data (grain, by `jax.process_index()`), and
the mesh makes the arrays global. A run resumes from the newest readable checkpoint in
`workdir/checkpoints` (state, data iterator position and RNG), so stopping it at any point and
starting it again gives the same parameters as never stopping (bit for bit on one machine).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from mmar_jax import checkpoint
from mmar_jax.data import corrupt, pipeline, sequences, text_accounting
from mmar_jax.models import lora
from mmar_jax.models.mmar import MMARConfig, head_slots
from mmar_jax.train import assets, checkpointing, experiment, flops, metrics, optimizer, progress, sharding
from mmar_jax.train import ema as ema_lib
from mmar_jax.train import state as state_lib
from mmar_jax.train import step as step_lib
from mmar_jax.train import mesh as mesh_lib

EvalFn = Callable[[experiment.Experiment, Any, int], None]  # (experiment, params, step)


class TrainingDiverged(RuntimeError):
  """Too many consecutive non-finite steps; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
  start_step: int  # The step it started from (0, or the checkpoint it resumed).
  step: int  # The step the run stopped at (its checkpoint holds exactly this state).
  reason: str  # 'done', 'time_limit', 'preempted'
  last_metrics: dict[str, float]


class _Preemption:
  """Notes SIGTERM (a scheduler's preemption notice) so the loop can save and exit between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._note)
    return self

  def _note(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)

  def stop_reason(self, out_of_time: bool) -> str | None:
    """'preempted' when any process got the notice, else 'time_limit' when any process's clock ran
    out (`out_of_time` here), else None. Decided together: all hosts must stop at the same step to
    save together, and their clocks differ."""
    flags = np.array([self.requested, out_of_time])
    if jax.process_count() > 1:
      flags = np.any(multihost_utils.process_allgather(flags), axis=0)
    return "preempted" if flags[0] else "time_limit" if flags[1] else None


def default_eval_fn(config: ml_collections.ConfigDict, workdir: str) -> EvalFn | None:
  """The periodic evaluation hook, None when config.train.eval_every is 0: the synthetic shapes'
  scorer (train/evaluation.py; it judges by their labels only), else held-out captions drawn and
  questions answered (train/held_out_eval.py; None when nothing is held out)."""
  if not config.train.eval_every:
    return None
  if config.data.source != "synthetic":
    from mmar_jax.train import held_out_eval  # Pulls in the inference loops; only runs that evaluate need it.
    if jax.process_index() == 0:
      held = ("the validation loss and held-out captions and questions (data.validation_fraction) are the "
              "evaluation" if config.data.validation_fraction else "set data.validation_fraction for a "
              "validation loss and held-out captions and questions")
      print(f"evaluation: the synthetic-shapes scorer is skipped: data.source={config.data.source!r} is not "
            f"the synthetic shapes; {held}", flush=True)
    return held_out_eval.make_hook(config, workdir)
  from mmar_jax.train import evaluation  # Pulls in the inference loops; only runs that evaluate need it.
  return evaluation.make_hook(config, workdir)


def build_optimizer(exp: experiment.Experiment, config: ml_collections.ConfigDict):
  """AdamW for the run; under LoRA the base weights freeze and, of the embedding table, only
  the rows of the tokens MMAR adds (<boi>, <eoi>, <mask>) train [ours]."""
  rank = config.model.lora.rank
  if not rank:
    return optimizer.make_optimizer(config.train)
  params = jax.eval_shape(lambda key: nn.meta.unbox(exp.init_params(key)), jax.random.key(0))
  ids = exp.special_ids
  return optimizer.make_optimizer(config.train, params, lora_rank=rank, train_rows=(ids.boi, ids.eoi, ids.mask))


def ema_keep(exp: experiment.Experiment, config: ml_collections.ConfigDict) -> state_lib.EmaKeep:
  """The params paths the EMA averages: those the optimizer moves (all without LoRA); None without EMA."""
  if not config.train.ema_decay:
    return None
  rank = config.model.lora.rank
  if not rank:
    return lambda _: True
  params = jax.eval_shape(lambda key: nn.meta.unbox(exp.init_params(key)), jax.random.key(0))
  return ema_lib.trainable_paths(lora.trainable_mask(params, rank)).__contains__


def training_flops_per_row(config: ml_collections.ConfigDict) -> float:
  """Model FLOPs of one training row (forward + backward) by the convention in train/flops.py:
  the backbone over seq_len tokens, the adapter over every image slot of the row (static shapes:
  all M x N slots, masked or not) and the head over its config.diffusion.head_capacity share."""
  cfg = MMARConfig.from_config(config, mask_token_id=0)
  seq = sequences.SequenceConfig.from_config(config)
  slots = seq.max_images * seq.image_tokens
  backbone = flops.backbone_flops_per_token(cfg.backbone, seq.seq_len).training * seq.seq_len
  adapter = flops.adapter_flops_per_token(cfg.adapter, seq.image_tokens).training * slots
  head = (flops.head_flops_per_token(cfg.head, cfg.backbone.hidden_size, cfg.diffusion_batch_mul).training
          * head_slots(slots, cfg.head_capacity))
  return backbone + adapter + head


@dataclasses.dataclass
class Run:
  """A run's pieces: everything the loop (or a tool that writes a step-0 checkpoint) needs."""
  config: ml_collections.ConfigDict
  mesh: Any
  exp: experiment.Experiment
  tx: Any
  state_shardings: state_lib.TrainState
  data_iterator: Any
  mngr: Any
  unfinished: list[int]  # Steps whose save never finished, seen before the manager cleaned them up.
  ema_keep: state_lib.EmaKeep = None  # The params paths the EMA holds; None: no EMA.
  data_start: int = 0  # Record of each host's slice the data stream starts at (checkpointing.py).

  def make_iterator(self, start: int = 0):
    return iter(pipeline.build_dataset(pipeline.PipelineConfig.from_config(self.config), self.exp.text_tokenizer,
                                       start=start))

  def fresh_state(self) -> state_lib.TrainState:
    return state_lib.create(self.exp.init_params, self.tx, self.config.seed, self.mesh,
                            self.config.mesh.logical_axis_rules, self.ema_keep)[0]

  def with_params_from(self, path: str, state: state_lib.TrainState) -> state_lib.TrainState:
    """`state` with config.train.init_params' weights overlaid (the EMA restarted at them)."""
    params, _, step = checkpoint.load_params(path)
    params = state_lib.overlay(state.params, params)
    if jax.process_index() == 0:
      print(f"initialised the params from {path} (step {step}); optimizer fresh", flush=True)
    # Its own buffers: the step donates the state, and one buffer in two leaves cannot be donated.
    ema = None if state.ema is None else jax.tree.map(lambda x: x.copy(), ema_lib.prune(params, self.ema_keep))
    return state.replace(params=params, ema=ema)

  def restore(self, start_over: bool = False) -> state_lib.TrainState | None:
    """The newest readable checkpoint, on this run's mesh, with the data iterator moved to it
    (`self.data_iterator` replaced); None when there is none. Prints what it did (process 0)."""
    target = state_lib.abstract(self.exp.init_params, self.tx, self.config.seed, self.state_shardings,
                                self.ema_keep)
    resumed = checkpointing.resume(self.mngr, target, self.make_iterator, mesh=self.mesh,
                                   global_batch=self.config.data.batch_size, unfinished=self.unfinished,
                                   start_over=start_over)
    if resumed is None:
      return None
    self.data_iterator, self.data_start = resumed.data_iterator, resumed.data_start
    if jax.process_index() == 0:
      print("\n".join(resumed.lines), flush=True)
    return resumed.state

  def run_info(self) -> dict[str, Any]:
    return checkpointing.run_info(self.mesh, self.config.data.batch_size, self.data_start)

  def save(self, state: state_lib.TrainState, *, force: bool = False) -> bool:
    return checkpointing.save(self.mngr, state, self.data_iterator, self.config, self.run_info(), force=force)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  mesh = mesh_lib.make_mesh(config)
  exp = experiment.build(config)
  tx = build_optimizer(exp, config)
  keep = ema_keep(exp, config)
  state_shardings = state_lib.shardings(exp.init_params, tx, mesh, config.mesh.logical_axis_rules, keep)
  directory = checkpoint.path_of(workdir) / checkpoint.CHECKPOINTS
  unfinished = checkpointing.unfinished_saves(directory)
  mngr = checkpointing.manager(directory, config.train)
  if jax.process_index() == 0:
    assets.copy_tokenizer(config, workdir)
  run = Run(config=config, mesh=mesh, exp=exp, tx=tx, state_shardings=state_shardings, data_iterator=None,
            mngr=mngr, unfinished=unfinished, ema_keep=keep)
  try:
    run.data_iterator = run.make_iterator()
  except BaseException:
    # A bad data source is a user error (one line, exit 2): without closing, orbax's background
    # thread meets the interpreter's shutdown and prints a traceback after the message.
    mngr.close()
    raise
  return run


def eval_params(state: state_lib.TrainState) -> Any:
  """What the in-training evaluation samples with: the EMA weights where the run keeps them, as `evaluate` does."""
  return state.params if state.ema is None else ema_lib.merge(state.params, state.ema)


def train(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = True, start_over: bool = False,
          eval_fn: EvalFn | None = None, max_steps: int | None = None) -> RunResult:
  """Trains to config.train.num_steps (or `max_steps`, for tests that stop a run early).

  `start_over`: when the workdir has checkpoints and none is readable, move them aside and start
  from step 0 instead of raising checkpointing.NoReadableCheckpoint.
  """
  start_time = time.monotonic()
  t = config.train
  run = setup(config, workdir)
  state = run.restore(start_over=start_over) if resume else None
  if state is None:
    state = run.fresh_state()
    if t.init_params:
      state = run.with_params_from(t.init_params, state)
  mesh, rules, exp, mngr, data_iterator = run.mesh, config.mesh.logical_axis_rules, run.exp, run.mngr, run.data_iterator
  train_step = step_lib.make_train_step(exp.model, exp.image_tokenizer, run.tx, optimizer.learning_rate_schedule(t),
                                        step_lib.StepConfig.from_config(config))
  step = start_step = int(state.step)
  stop_at = t.num_steps if max_steps is None else min(max_steps, t.num_steps)
  tokenizer_params = jax.device_put(exp.image_tokenizer_params(), NamedSharding(mesh, PartitionSpec()))
  with sharding.activate(mesh, rules):
    jitted = jax.jit(train_step, in_shardings=(run.state_shardings, pipeline.batch_sharding(mesh, rules), None),
                     out_shardings=(run.state_shardings, None), donate_argnums=0)
  writer = metrics.Writer(metrics.logdir(workdir))
  validate = _validation(run, tokenizer_params, writer)
  window = _Window(writer, config, metrics.peak_flops_per_device(jax.devices()[0], t.peak_flops_per_device),
                   lambda: corrupt.scalars(pipeline.corrupt_counts(data_iterator))
                   | text_accounting.scalars(text_accounting.global_counts(data_iterator)))
  reason = "done"
  bar = tqdm.tqdm(total=stop_at, initial=step, desc="train", unit="step", disable=jax.process_index() != 0,
                  dynamic_ncols=True)
  pending = None  # (step, metrics) of the previous step: read one step late so dispatch stays ahead.
  try:
    with _Preemption() as preemption, sharding.activate(mesh, rules), progress.logs_above_the_bar():
      while step < stop_at:
        batch = pipeline.to_global(next(data_iterator), mesh, rules)
        state, step_metrics = jitted(state, batch, tokenizer_params)
        step += 1
        if pending is not None:
          window.add(*pending, mngr)
          bar.set_postfix(window.postfix(), refresh=False)
        pending = (step, step_metrics)
        bar.update(1)
        if step % t.checkpoint_every == 0:
          run.save(state)
        if t.eval_every and step % t.eval_every == 0:
          if validate is not None:
            validate(eval_params(state), step)
          if eval_fn is not None:
            eval_fn(exp, eval_params(state), step)
        stop = preemption.stop_reason(bool(t.time_limit_s) and time.monotonic() - start_time > t.time_limit_s)
        if stop is not None:
          reason = stop
          break
      if reason == "done" and validate is not None and t.eval_every and step % t.eval_every:
        validate(eval_params(state), step)
      if pending is not None:
        window.add(*pending, mngr, final=True)
      bar.set_postfix(window.postfix(), refresh=True)
      run.save(state, force=True)
  finally:
    # Stops grain's worker processes now, whatever ends the run (an error, SIGTERM, the last step),
    # so that none outlives the message that says why; left to the interpreter's exit they may not stop cleanly.
    data_iterator.close()
    mngr.wait_until_finished()
    bar.close()
    writer.close()
    if jax.process_index() == 0:
      print("\n".join(corrupt.summary_lines(pipeline.corrupt_counts(data_iterator))), flush=True)
  if reason == "done" and eval_fn is not None and t.eval_every and step % t.eval_every:
    eval_fn(exp, eval_params(state), step)
  _report_text(config, data_iterator)
  return RunResult(start_step=start_step, step=step, reason=reason, last_metrics=window.last)


def _validation(run: Run, tokenizer_params, writer: metrics.Writer):
  """`validate(params, step)`: the mean loss over this run's held-out records (data.validation_fraction),
  written as val/loss, val/ce, val/v_loss and printed; None when nothing is held out."""
  config = run.config
  pc = pipeline.PipelineConfig.from_config(config)
  dataset = pipeline.build_validation_dataset(pc, run.exp.text_tokenizer)
  if dataset is None:
    return None
  rules = config.mesh.logical_axis_rules
  fn = step_lib.make_validation_step(run.exp.model, run.exp.image_tokenizer, step_lib.StepConfig.from_config(config))
  with sharding.activate(run.mesh, rules):
    jitted = jax.jit(fn, in_shardings=(run.state_shardings.params, pipeline.batch_sharding(run.mesh, rules), None,
                                       None))
  rng = jax.random.key(config.data.seed)

  def validate(params, step: int) -> None:
    sums, count = {}, 0
    with sharding.activate(run.mesh, rules):
      for batch in dataset:  # Each host the same number of batches: shares differ by at most one record.
        parts = jax.device_get(jitted(params, pipeline.to_global(batch, run.mesh, rules), tokenizer_params, rng))
        sums = {k: sums.get(k, 0.0) + float(v) for k, v in parts.items()}
        count += 1
    means = {f"val/{k}": v / count for k, v in sums.items()}
    writer.scalars(step, means)
    if jax.process_index() == 0:
      tqdm.tqdm.write(f"step {step}: validation on {count} batches: " +
                      ", ".join(f"{k} {v:.4f}" for k, v in means.items()))

  return validate


def _report_text(config: ml_collections.ConfigDict, data_iterator) -> None:
  """The end-of-run lines on text cut to fit and unknown words, over every host (data/text_accounting.py)."""
  counts = text_accounting.global_counts(data_iterator)
  if jax.process_index() == 0:
    room = sequences.SequenceConfig.from_config(config).text_room
    print("\n".join(text_accounting.summary_lines(counts, room)), flush=True)


class _Window:
  """Accumulates steps between metric writes; checks the non-finite skip limit every step.

  `data_scalars`: the data iterator's record and text counts (data/corrupt.py, data/text_accounting.py),
  written with the metrics.
  """

  def __init__(self, writer: metrics.Writer, config: ml_collections.ConfigDict, peak: float | None,
               data_scalars: Callable[[], dict[str, float]]):
    self.writer, self.config, self.peak, self.data_scalars = writer, config, peak, data_scalars
    self.row_flops = training_flops_per_row(config)
    self.last: dict[str, float] = {}
    self._reset(time.perf_counter())

  def _reset(self, now: float) -> None:
    self.steps, self.images, self.start = 0, 0.0, now

  def add(self, step: int, step_metrics, mngr, final: bool = False) -> None:
    values = jax.device_get(step_metrics)
    t = self.config.train
    consecutive = int(values["consecutive_skips"])
    if consecutive >= t.max_consecutive_skips:
      raise TrainingDiverged(
          f"{consecutive} consecutive steps up to step {step} had a non-finite loss or gradient "
          f"(config.train.max_consecutive_skips={t.max_consecutive_skips}); stopped without saving them. The "
          f"last good checkpoint is step {mngr.latest_step()} in {mngr.directory}")
    self.steps += 1
    self.images += float(values["images"])
    if step % t.log_every and not final:
      return
    now = time.perf_counter()
    seconds, rows = now - self.start, self.steps * self.config.data.batch_size
    logged = {k: float(v) for k, v in values.items() if k not in ("tokens", "images")}
    logged.update(metrics.throughput(tokens=rows * self.config.data.seq_len, images=self.images, seconds=seconds,
                                     flops=rows * self.row_flops, num_devices=jax.device_count(), peak=self.peak))
    logged.update(step_time_s=seconds / self.steps, ce_weight=self.config.loss.ce_weight,
                  diffusion_weight=self.config.loss.diffusion_weight)
    logged.update(self.data_scalars())
    self.writer.scalars(step, logged)
    self.last = logged
    self._reset(now)

  def postfix(self) -> dict[str, str]:
    return {k: f"{self.last[k]:.3f}" for k in ("loss", "ce", "v_loss") if k in self.last}
