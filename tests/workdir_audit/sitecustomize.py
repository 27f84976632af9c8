"""Records every plain file call our code makes on a workdir (tests put this folder on PYTHONPATH).

Python imports `sitecustomize` at start-up. With MMAR_JAX_AUDIT_WORKDIR=DIR and
MMAR_JAX_AUDIT_LOG=FILE set, an audit hook sees each file operation (open, os.listdir, os.mkdir,
os.rename, shutil.rmtree, ...: Python's audit events) on a path under DIR, and when the first
frame outside the standard library that asked for it is in mmar_jax/, appends a line to FILE.
Operations that reach DIR through etils' epath (or orbax and tensorstore, which use it) pass:
epath is what makes gs:// and other filesystems work, so any direct os/open/pathlib call on the
workdir would break such a workdir. (os.stat and os.path.exists raise no audit event, so checks
by those go unseen; the writes, listings and moves they guard do not.)
"""

import os
import sys
import sysconfig

_WORKDIR = os.environ.get("MMAR_JAX_AUDIT_WORKDIR")
_LOG = os.environ.get("MMAR_JAX_AUDIT_LOG")
_OURS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "mmar_jax") + os.sep
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
_busy = False


def _paths(args):
  for arg in args:
    if isinstance(arg, (str, bytes, os.PathLike)):
      path = os.fsdecode(os.fspath(arg))
      if "://" not in path:
        yield os.path.abspath(path)


def _caller() -> str:
  frame = sys._getframe(2)  # noqa: SLF001 - above the hook and its dispatcher.
  while frame is not None:
    name = frame.f_code.co_filename
    if not (name.startswith(_STDLIB) or name.startswith("<frozen")):
      return f"{name}:{frame.f_lineno}"
    frame = frame.f_back
  return "?"


def _hook(event: str, args) -> None:
  global _busy
  if _busy or not (event == "open" or event.startswith(("os.", "shutil.", "glob."))):
    return
  _busy = True
  try:
    touched = [p for p in _paths(args) if p == _WORKDIR or p.startswith(_WORKDIR + os.sep)]
    if touched:
      caller = _caller()
      if caller.startswith(_OURS):
        os.write(_fd, f"{caller}: {event} {touched[0]}\n".encode())
  finally:
    _busy = False


if _WORKDIR and _LOG:
  _WORKDIR = os.path.abspath(_WORKDIR)
  _fd = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  sys.addaudithook(_hook)
