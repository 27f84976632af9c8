"""The workdir is touched only through etils' epath, the path library orbax uses, so that gs:// and
any other filesystem registered with it work for checkpoints, evaluation outputs and TensorBoard.

tests/workdir_audit/sitecustomize.py records each plain file call (open, os.*, shutil.*) that our
code makes on a workdir; the checkpoint travel test runs every command under it. Here: that it
catches such a call from our code and lets one through epath pass.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AUDIT = os.path.join(REPO, "tests", "workdir_audit")


def audited_env(workdir: str, log: str) -> dict[str, str]:
  """This environment with the audit on for `workdir`, writing what it finds to `log`."""
  path = os.pathsep.join([AUDIT, REPO, os.environ.get("PYTHONPATH", "")])
  return dict(os.environ, PYTHONPATH=path, MMAR_JAX_AUDIT_WORKDIR=workdir, MMAR_JAX_AUDIT_LOG=log)


# Code compiled as if it were a module of mmar_jax/: a plain open, a listing and a move of the
# workdir, then the same through epath.
PROBE = """
import os, sys
from etils import epath
workdir = sys.argv[1]
ours = compile('''
open(os.path.join(workdir, "plain.txt"), "w").close()
os.listdir(workdir)
os.rename(os.path.join(workdir, "plain.txt"), os.path.join(workdir, "moved.txt"))
(epath.Path(workdir) / "via_epath.txt").write_text("x")
(epath.Path(workdir) / "via_epath.txt").rename(epath.Path(workdir) / "renamed.txt")
list(epath.Path(workdir).iterdir())
''', os.path.join(sys.argv[2], "mmar_jax", "probe.py"), "exec")
exec(ours)
open(os.path.join(workdir, "from_a_test.txt"), "w").close()  # Not our library's code: not recorded.
"""


def test_the_audit_records_plain_calls_from_our_code_and_passes_epath(tmp_path):
  workdir, log = tmp_path / "run", tmp_path / "audit.txt"
  workdir.mkdir()
  subprocess.run([sys.executable, "-c", PROBE, str(workdir), REPO], env=audited_env(str(workdir), str(log)),
                 check=True, timeout=120)
  lines = log.read_text().splitlines()
  assert [line.split(": ", 1)[1].split()[0] for line in lines] == ["open", "os.listdir", "os.rename"], lines
  assert all(line.startswith(os.path.join(REPO, "mmar_jax", "probe.py:")) for line in lines), lines
  assert sorted(os.listdir(workdir)) == ["from_a_test.txt", "moved.txt", "renamed.txt"]
