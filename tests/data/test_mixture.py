"""Mixtures (grain's MapDataset.mix) and the validation split: shares, determinism, resume, bad entries,
held-out records never trained on, and the validation loss a short run logs."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

import grain
from mmar_jax import configs
from mmar_jax.data import holdout, mixture, pipeline
from mmar_jax.train import loop
from tests.data.test_manifest import TOK, write_images
from tests.data.test_pipeline import assert_batches_equal
from tests.train import tiny
from tests.train.test_local_launch import tensorboard_scalars


def write_manifest(root, name, count):
  """A caption manifest of `count` records over the PNGs under root/images (write_images)."""
  path = root / f"{name}.jsonl"
  path.write_text("".join(json.dumps({"image": f"images/{i % 8}.png", "caption": f"a red circle {name}"}) + "\n"
                          for i in range(count)))
  return path


@pytest.fixture(name="manifests")
def _manifests(tmp_path):
  write_images(tmp_path, 8)
  return write_manifest(tmp_path, "a", 40), write_manifest(tmp_path, "b", 100)


def mixture_config(spec, *overrides):
  return pipeline.PipelineConfig.from_config(configs.load_config("configs/demo.py", [
      "data.source=mixture", f"data.mixture={spec}", "tokenizer.image_size=32", "data.packing=False",
      "data.batch_size=8", "data.num_workers=0", *overrides]))


def test_shares_follow_the_weights_and_the_stream_is_deterministic(manifests):
  a, b = manifests
  pc = mixture_config(f"manifest:{a}@3,manifest:{b}@1", "data.validation_fraction=0.1")
  records = pipeline.training_records(pc, process_index=0, process_count=1)
  sources = [records[i]["source"] for i in range(1000)]
  shares = collections.Counter(sources)
  assert abs(shares[str(a)] / 1000 - 0.75) <= 0.02 and abs(shares[str(b)] / 1000 - 0.25) <= 0.02
  again = pipeline.training_records(pc, process_index=0, process_count=1)
  assert [again[i]["index"] for i in range(200)] == [records[i]["index"] for i in range(200)]


def test_resumed_mixture_iterator_continues_exactly(manifests, tmp_path):
  a, b = manifests
  pc = mixture_config(f"manifest:{a}@1,manifest:{b}@2", "data.validation_fraction=0.2")
  it = iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1))
  [next(it) for _ in range(2)]
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it) for _ in range(3)]
  resumed = iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1))
  manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  for want in expected:
    assert_batches_equal(next(resumed), want)
  manager.close()


@pytest.mark.parametrize("entry, why", [
    ("manifest:a.jsonl", "is not KIND:LOCATION@WEIGHT"),
    ("webdataset:x@1", "has kind 'webdataset'"),
    ("manifest:a.jsonl@heavy", "has weight 'heavy', not a number"),
    ("manifest:a.jsonl@0", "must be a positive number"),
    ("synthetic:many@1", "number of records"),
])
def test_a_bad_entry_is_named_in_one_line(entry, why):
  with pytest.raises(configs.ConfigError, match=f"^config.data.mixture entry '{entry}' .*{why}"):
    mixture.parse(f"synthetic:100@1,{entry}")


def test_the_cli_refuses_a_bad_entry_with_exit_2(tmp_path):
  args = [sys.executable, "-m", "mmar_jax.cli.main", *tiny.cli_args(str(tmp_path / "run"), "data.source=mixture",
                                                                   "data.mixture=manifest:a.jsonl@-1")]
  refused = subprocess.run(args, capture_output=True, text=True, timeout=300)
  assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
  assert "config.data.mixture entry 'manifest:a.jsonl@-1' has weight '-1'" in refused.stderr.strip().splitlines()[-1]


def test_the_split_is_stable_and_never_trained_on(manifests):
  mask = holdout.held_out(10_000, 0.1)
  assert abs(mask.mean() - 0.1) < 0.01 and np.array_equal(mask[:100], holdout.held_out(100, 0.1))
  _, b = manifests
  pc = mixture_config(f"manifest:{b}@1", "data.validation_fraction=0.25")
  held = set(np.flatnonzero(holdout.held_out(100, 0.25)).tolist())
  assert held
  for count in (1, 2):  # Any number of hosts: none of them trains on a held-out record.
    for index in range(count):
      records = pipeline.training_records(pc, process_index=index, process_count=count)
      assert not {records[i]["index"] for i in range(300)} & held
  validation = pipeline.build_validation_dataset(pc, TOK, process_index=0, process_count=1)
  seen = {int(i) for batch in validation for i in batch.record_index[:, 0]}
  assert seen and seen <= held


def test_a_run_logs_the_validation_loss_and_skips_the_shapes_scorer(manifests, tmp_path, capsys):
  a, b = manifests
  workdir = str(tmp_path / "run")
  config = tiny.config("data.source=mixture", f"data.mixture=manifest:{a}@1,manifest:{b}@1",
                       "data.validation_fraction=0.25", "train.eval_every=2",
                       "train.num_steps=3")
  result = loop.train(config, workdir, eval_fn=loop.default_eval_fn(config, workdir))
  assert result.reason == "done"
  out = capsys.readouterr().out
  assert "synthetic-shapes scorer is skipped: data.source='mixture'" in out
  assert "step 2: validation on " in out and "val/ce" in out
  _, scalars = tensorboard_scalars(workdir)
  for name in ("val/loss", "val/ce", "val/v_loss"):
    assert sorted(scalars[name]) == [2, 3] and all(np.isfinite(v) for v in scalars[name].values())
