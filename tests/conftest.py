"""Test set-up: 8 fake CPU devices, so that every sharding path runs on a CPU-only machine.

The tests' programs are tiny and compiled once or twice each, so compiling them dominates:
`--xla_backend_optimization_level=0` (LLVM's code generation; XLA's graph passes still run)
compiles a tiny train step about a third faster. Code generated that way can round the last
bits differently from an optimised build, so a child process that must match this one
bit for bit inherits XLA_FLAGS. The demo test trains in a child process without it.

JAX's persistent compilation cache is on for the session (a fresh directory, removed at the
end), every compile included: the training tests start many `mmar-jax train` processes that
compile the same tiny step, and a cached executable starts one in 11 s instead of 32 s on 2
cores. Child processes inherit it through the environment.

Shapes are checked: jaxtyping's import hook, installed here before anything imports mmar_jax,
runs beartype over every annotated function and dataclass of the package, so a shape or dtype
that contradicts an annotation fails the call (at trace time under jit). Only this process:
the CLI's subprocesses run unchecked, as users do.

`make test` runs the suite on pytest-xdist workers (`-n auto --dist loadgroup`): one per core
while memory allows (`pytest_xdist_auto_num_workers`), each test file a group on one worker, so
module fixtures are built once, and tests/export a single group for its shared run. The first
process of a session (xdist's controller, or plain pytest) makes the session directory, which
holds the compilation cache and the demo's run; workers inherit it through the environment and
the first process removes it when the session ends.

The demo test's training starts in the background as soon as collection selects it (see
tests/train/test_demo.py), started by the first process; the test runs last, waits for it, and
the training is ended, if still running, when the session ends.
"""

import os
import pkgutil
import shutil
import sys
import tempfile

# Must happen before jax is imported anywhere.
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
SESSION_DIR_ENV = "MMAR_JAX_TEST_SESSION_DIR"
_OWN_SESSION_DIR = None  # Set in the process that made the session directory (and removes it).
if SESSION_DIR_ENV not in os.environ:
  _OWN_SESSION_DIR = os.environ[SESSION_DIR_ENV] = tempfile.mkdtemp(prefix="mmar_jax_test_session_")
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_OWN_SESSION_DIR, "xla_cache")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import jaxtyping  # noqa: E402
import pytest  # noqa: E402

assert not any(m == "mmar_jax" or m.startswith("mmar_jax.") for m in sys.modules), "mmar_jax imported before the hook"
# Every module of the package but the command lines (thin, no array code), which the in-process
# CLI tests import afresh to reset absl's flags: beartype's forward references would still
# point at the first import's classes. The PEP 484 numeric tower (an int where float is
# annotated) is how the typing spec reads annotations.
_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mmar_jax")
_CHECKED = [f"mmar_jax.{m.name}" for m in pkgutil.iter_modules([_PACKAGE]) if m.name != "cli"]
jaxtyping.install_import_hook(
    _CHECKED, "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.devices()}"


DEMO_TEST = "tests/train/test_demo.py::"
# Bytes of memory an xdist worker is given: its 8 fake devices' programs, plus the training
# processes that some tests start.
WORKER_MEMORY_BYTES = 5 * 2**30


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: a worker a core this process may use, as many as memory holds, at least one."""
  del config
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return max(1, min(len(os.sched_getaffinity(0)), memory // WORKER_MEMORY_BYTES))


def pytest_collection_modifyitems(session, config, items):
  """Each file is one xdist group (tests/export, whose files share one run, a single group).
  The demo test waits for the background training: it runs last, so that every other test
  overlaps that training instead of some of them queueing behind the wait."""
  del session, config
  for item in items:
    path = item.nodeid.split("::")[0]
    item.add_marker(pytest.mark.xdist_group("tests/export" if path.startswith("tests/export/") else path))
  items.sort(key=lambda item: item.nodeid.startswith(DEMO_TEST))  # Stable: the others keep their order.


def _start_demo_training(nodeids) -> None:
  if any(nodeid.startswith(DEMO_TEST) for nodeid in nodeids):
    from tests.train import test_demo
    test_demo.start_training()


def pytest_collection_finish(session):
  # Under xdist every worker collects; the controller starts the training (below) instead.
  if not session.config.option.collectonly and "PYTEST_XDIST_WORKER" not in os.environ:
    _start_demo_training(item.nodeid for item in session.items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
  if not node.config.option.collectonly:
    _start_demo_training(ids)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if "tests.train.test_demo" in sys.modules:
    sys.modules["tests.train.test_demo"].stop_training()
  if _OWN_SESSION_DIR is not None:
    shutil.rmtree(_OWN_SESSION_DIR, ignore_errors=True)
