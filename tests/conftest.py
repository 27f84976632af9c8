"""Test set-up: 8 fake CPU devices, so that every sharding path runs on a CPU-only machine.

JAX's persistent compilation cache is on for the session (a fresh directory, removed at the
end), every compile included: the training tests start many `mmar-jax train` processes that
compile the same tiny step, and a cached executable starts one in 11 s instead of 32 s on 2
cores. Child processes inherit it through the environment.
"""

import os
import shutil
import tempfile

# Must happen before jax is imported anywhere.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="mmar_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.devices()}"


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _CACHE_DIR is not None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
