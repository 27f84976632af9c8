"""The layers import downwards only: the models know nothing of conversion, data, training, inference
or the CLI, and the input pipeline (which grain's worker processes import) needs no flax."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_modules(path: pathlib.Path) -> set[str]:
  """Every module a file imports, at any depth of the file (function-level imports included)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def test_models_import_no_higher_layer():
  higher = tuple(f"mmar_jax.{layer}" for layer in ("convert", "data", "train", "infer", "cli"))
  offenders = {str(p.relative_to(ROOT)): sorted(n for n in imported_modules(p) if n.startswith(higher))
               for p in sorted((ROOT / "mmar_jax" / "models").glob("*.py"))}
  assert not {k: v for k, v in offenders.items() if v}


def test_the_input_pipeline_imports_without_flax():
  probe = ("import sys, mmar_jax.data.pipeline; "
           "print(sorted(m for m in sys.modules if m == 'flax' or m.startswith(('flax.', 'mmar_jax.models'))))")
  result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]", result.stdout
