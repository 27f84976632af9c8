"""Every bad flag a user can type gets one line naming it, exit status 2 and no traceback.

Real `mmar-jax` processes, as a user runs them: the config flags are parsed by absl before a
subcommand runs, so these errors are the parser's, not the subcommand's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Subcommands that take a --config, each with the other flags it needs to get past parsing.
WITH_CONFIG = {
    "train": ["--workdir=W"],
    "info": [],
    "init-from-hf": ["--hf-dir=H", "--workdir=W"],
    "import-hf": ["--hf-dir=H", "--out=O"],
    "convert-vae": ["--in=I", "--out=O"],
    "prepare-data": ["--cache-latents", "--manifest=M", "--out=O"],
}
WITHOUT_CONFIG = ("evaluate", "generate", "describe", "export-hf", "export-torch")
DEMO = os.path.abspath("configs/demo.py")


def run_all(commands: dict[str, list[str]], cwd) -> dict[str, subprocess.CompletedProcess]:
  """Runs the commands at once (each is a fresh interpreter importing jax; two cores do two)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = {key: subprocess.Popen([sys.executable, "-m", "mmar_jax.cli.main", *args], cwd=cwd, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
           for key, args in commands.items()}
  results = {}
  for key, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  return results


def test_bad_flags_fail_by_name_without_a_traceback(tmp_path):
  (tmp_path / "notes.txt").write_text("not a checkpoint\n")
  (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
  (tmp_path / "a_file").write_text("x")
  cases = {}  # key -> (args, words the one line must hold)
  for name, extra in WITH_CONFIG.items():
    cases[f"{name} misspelt field"] = ([name, f"--config={DEMO}", "--config.train.num_step=5", *extra],
                                       ["--config.train.num_step", "num_steps"])
  cases["train misspelt section"] = (["train", f"--config={DEMO}", "--config.trian.x=1", "--workdir=W"],
                                     ["--config.trian.x", "'trian'"])
  cases["train missing config file"] = (["train", "--config=nowhere/demo.py", "--workdir=W"],
                                        ["--config=nowhere/demo.py", "No such file"])
  cases["train without --config"] = (["train", "--workdir=W"], ["--config is required"])
  cases["train without --workdir"] = (["train", f"--config={DEMO}"], ["--workdir"])
  for name in WITHOUT_CONFIG:
    cases[f"{name} unknown flag"] = ([name, "--no-such-flag=1"], ["no-such-flag"])
  cases["convert-vae text file"] = (["convert-vae", f"--in={tmp_path / 'notes.txt'}", f"--out={tmp_path / 'v1'}"],
                                    ["notes.txt", "not a torch checkpoint"])
  cases["convert-vae garbage safetensors"] = (
      ["convert-vae", f"--in={tmp_path / 'garbage.safetensors'}", f"--out={tmp_path / 'v2'}"],
      ["garbage.safetensors", "not a readable safetensors file"])
  cases["prepare-data bad image background"] = (
      ["prepare-data", f"--config={DEMO}", "--config.data.image_background=notacolour", *WITH_CONFIG["prepare-data"]],
      ["config.data.image_background='notacolour' must be a colour PIL knows"])
  results = run_all({key: args for key, (args, _) in cases.items()}, tmp_path)
  for key, (args, words) in cases.items():
    r = results[key]
    assert r.returncode == 2, (key, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, (key, r.stderr[-3000:])
    lines = [line for line in r.stderr.splitlines() if line.startswith(f"mmar-jax {args[0]}: error:")]
    assert len(lines) == 1, (key, r.stderr[-2000:])
    for word in words:
      assert word in lines[0], (key, word, lines[0])
  assert not (tmp_path / "v1").exists() and not (tmp_path / "v2").exists()  # Nothing half-written.


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_onto_a_plain_file_names_it(tmp_path, overwrite):
  from mmar_jax.convert import hf_qwen2
  from tests.models.test_backbone import CFG
  target = tmp_path / "a_file"
  target.write_text("keep me")
  with pytest.raises(FileExistsError, match="a_file"):
    hf_qwen2.save(CFG, {}, target, overwrite=overwrite)
  assert target.read_text() == "keep me"
