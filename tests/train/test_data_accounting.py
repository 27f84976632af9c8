"""What a run says of its bad records: each warned about once, a table at the end, TensorBoard
scalars, and a stop on too many that leaves no worker process or shared memory behind."""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys

import pytest
from PIL import Image

from mmar_jax.data import corrupt, synthetic
from mmar_jax.train import loop
from tests.train import tiny
from tests.train.test_local_launch import tensorboard_scalars


def write_manifest(root, n: int, good: set[int]) -> str:
  """n JSONL lines: the records in `good` with a 24 px image, the rest pointing at missing files
  (and line 2, when bad, not JSON at all)."""
  (root / "images").mkdir(parents=True)
  source = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(n, 24, seed=3))
  lines = []
  for i in range(n):
    record = source[i]
    if i in good:
      Image.fromarray(record["image"]).save(root / "images" / f"{i}.png")
    lines.append("{not json" if i == 1 and i not in good else
                 json.dumps({"image": f"images/{i}.png", "caption": record["caption"]}))
  path = root / "m.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_too_many_bad_records_stop_the_cli_in_one_line_with_the_workers_closed(tmp_path):
  manifest = write_manifest(tmp_path, 30, good={0, 10, 20})
  args = tiny.cli_args(str(tmp_path / "run"), "data.source=manifest", f"data.manifest={manifest}",
                       "data.num_workers=2", "data.max_corrupt_fraction=0.5")
  # Stops at the first batch (3 good records of 30), before the step compiles.
  proc = subprocess.run([sys.executable, "-m", "mmar_jax.cli.main", *args], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert re.match(r"mmar-jax train: stopped: 27 of 30 distinct records \(90.0%\) were corrupt, more than "
                  r"config.data.max_corrupt_fraction=0.5; the last was \S+m.jsonl:\d+: ", last), proc.stderr
  # Grain's workers were stopped before the message: nothing of theirs follows it.
  for leftover in ("Traceback", "leaked shared_memory", "handle is closed"):
    assert leftover not in proc.stderr, proc.stderr
  warned = re.findall(r"skipping corrupt record \S+m.jsonl:(\d+): (image missing|line is not JSON)", proc.stderr)
  assert sorted(int(line) for line, _ in warned) == [i + 1 for i in range(30) if i % 10], proc.stderr
  assert re.search(r"^  bad records skipped +27$", proc.stdout, re.M), proc.stdout


def test_the_workers_are_stopped_before_the_error_leaves_train(tmp_path):
  manifest = write_manifest(tmp_path, 30, good={0, 10, 20})
  config = tiny.config("data.source=manifest", f"data.manifest={manifest}", "data.num_workers=2",
                       "data.max_corrupt_fraction=0.5")
  with pytest.raises(corrupt.CorruptDataError) as error:
    loop.train(config, str(tmp_path / "run"))
  # The traceback still references the iterator: only closing it stopped the worker processes.
  assert error.value.__traceback__ is not None and not multiprocessing.active_children()


def test_a_run_reports_its_bad_records_in_a_table_and_in_tensorboard(tmp_path, capsys):
  manifest = write_manifest(tmp_path, 12, good=set(range(12)) - {1, 5})
  workdir = str(tmp_path / "run")
  # 2 steps of 8 rows: 16 good records of 10 an epoch, so both bad ones come back in the second.
  config = tiny.config("data.source=manifest", f"data.manifest={manifest}", "data.max_corrupt_fraction=0.3",
                       "train.num_steps=2", "train.log_every=2")
  assert loop.train(config, workdir).reason == "done"
  out = capsys.readouterr().out
  lines = out[out.index("data (this host):"):].splitlines()[1:]
  table = lines[:next((i for i, line in enumerate(lines) if not line.startswith(" ")), len(lines))]  # Then text:.
  rows = {line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1].replace(",", "")) for line in table}
  assert rows["distinct records"] == 12 and rows["records read"] >= 18, out
  assert rows["bad records skipped"] == 2 and rows["image missing"] == 1 and rows["line is not JSON"] == 1, out
  _, scalars = tensorboard_scalars(workdir)
  assert scalars["data/corrupt_records"] == {2: 2.0} and scalars["data/records_seen"] == {2: 12.0}, scalars
  assert scalars["data/records_read"][2] >= 18
