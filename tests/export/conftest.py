"""One tiny run for every export test: the tiny config with LoRA, trained 4 steps, exported once.

`model.hf_vocab_size=39` marks the demo tokenizer's first 39 ids (its words) as the "original"
rows and the special tokens (ids 39..44) as MMAR's own, as after an HF import whose tokenizer
gained them: the default export-hf keeps 39 rows, --with-image-tokens the 45 that hold `<mask>` too,
export-torch the whole table (512 rows), so that import-torch gets every row back.
The EMA decay is 0.5, so that the weights every export reads by default (the EMA) have moved
well away from the init in 4 steps (the demo's 0.99 would leave them within 4% of it).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from tests.train import tiny

ORIGINAL_ROWS = 39
TRAIN = ("model.lora.rank=4", f"model.hf_vocab_size={ORIGINAL_ROWS}", "train.num_steps=4", "train.checkpoint_every=4",
         "train.log_every=4", "train.ema_decay=0.5")


def mmar_jax(*args, check=True):
  result = subprocess.run([sys.executable, "-m", "mmar_jax.cli.main", *args], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  if check and result.returncode != 0:
    raise AssertionError(f"mmar-jax {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
  return result


@dataclasses.dataclass(frozen=True)
class Exported:
  workdir: str
  torch_dir: str
  params: dict
  config: object


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
  from mmar_jax import checkpoint
  root = tmp_path_factory.mktemp("export")
  workdir = str(root / "run")
  tiny.run(workdir, *TRAIN)
  mmar_jax("export-torch", f"--ckpt={workdir}", f"--out={root / 'torch'}")
  params, config, step = checkpoint.load_params(workdir)
  assert step == 4
  return Exported(workdir=workdir, torch_dir=str(root / "torch"), params=params, config=config)
