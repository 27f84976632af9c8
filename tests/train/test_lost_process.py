"""A process lost mid-run ends the others within the heartbeat bound, with one line; a rerun resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mmar_jax.train import supervisor
from tests.train import tiny
from tests.train.test_distributed import fake_cpu_env, free_port

HEARTBEAT_S = 10
# The stated bound: config.distributed.heartbeat_timeout_s for the service to miss the heartbeats,
# plus the polling and the exit; a lost process 0 (the service's host) is noticed at once.
BOUND_S = HEARTBEAT_S + 15


def start_two(workdir: str, *extra: str) -> list[subprocess.Popen]:
  port = free_port()
  args = tiny.cli_args(workdir, f"distributed.heartbeat_timeout_s={HEARTBEAT_S}", *extra)
  return [subprocess.Popen([sys.executable, "-m", "mmar_jax.cli.main", *args], text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE,
                           env=fake_cpu_env(4, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                            JAX_PROCESS_ID=str(i))) for i in range(2)]


def kill_one_and_time_the_other(workdir: str, victim: int, at_step: int) -> tuple[int, float, str, str]:
  """Trains two processes until checkpoint `at_step` exists, SIGKILLs `victim` and times the
  other's exit: (its exit status, seconds, its stderr, the victim's stdout)."""
  procs = start_two(workdir, "train.num_steps=10000", "train.checkpoint_every=2")
  try:
    tiny.wait_for_step(workdir, at_step, *procs, timeout=600)
    procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    survivor = procs[1 - victim]
    _, err = survivor.communicate(timeout=BOUND_S + 60)
    seconds = time.monotonic() - killed
    print(f"survivor of killed process {victim}: exit {survivor.returncode} after {seconds:.1f} s; stderr:\n{err}")
    victim_out, _ = procs[victim].communicate()
    return survivor.returncode, seconds, err, victim_out
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
      proc.communicate()


def assert_one_clean_line(err: str, lost: int) -> int:
  """The survivor's one line names the lost process and a checkpoint; returns that step."""
  assert "Traceback" not in err and "Check failure" not in err and not re.search(r"^F\d{4} ", err, re.M), err
  assert "coordination_service" not in err and "The tasks have crashed" not in err and "read_only" not in err, err
  lines = [line for line in err.splitlines() if "the job lost" in line]
  assert len(lines) == 1, err
  match = re.search(rf"stopped: the job lost process {lost}; last good checkpoint: step (\d+) in \S+/checkpoints;",
                    lines[0])
  assert match, lines[0]
  return int(match.group(1))


@pytest.mark.slow
def test_a_lost_worker_or_coordinator_ends_the_other_within_the_bound_and_a_rerun_resumes(tmp_path):
  workdir = str(tmp_path)
  # The worker dies: the coordinator notices a missed heartbeat.
  rc, seconds, err, _ = kill_one_and_time_the_other(workdir, victim=1, at_step=2)
  assert rc == supervisor.LOST_EXIT, err
  assert seconds <= BOUND_S, (seconds, err)
  step = assert_one_clean_line(err, lost=1)
  assert step >= 2 and os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))
  # The same command on both processes carries on from that checkpoint; then the coordinator
  # (process 0, the service's host) dies, and the worker is stopped at once.
  rc, seconds, err, coordinator_out = kill_one_and_time_the_other(workdir, victim=0, at_step=step + 2)
  assert re.search(rf"^resumed from step {step}$", coordinator_out, re.M), coordinator_out
  assert rc == supervisor.LOST_EXIT, err
  assert seconds <= BOUND_S, (seconds, err)
  assert assert_one_clean_line(err, lost=0) >= step + 2


def test_lost_processes_reads_jax_fatal_logs():
  # The texts as jax 0.10.2 logs them (seen in this project's runs).
  worker = ("E1202 13:50:19.515215 6899 coordination_service.cc:1549] Use error polling to propagate the following "
            "error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n1\n"
            "The tasks have crashed.\nF1202 13:50:19.6 6917 client.h:80] Terminating process because the JAX "
            "distributed service detected fatal errors.")
  assert supervisor.lost_processes(worker) == [1]
  leader = ("F1202 13:51:19.448037 7241 client.h:80] Terminating process because the JAX distributed service "
            "detected fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the "
            "leader task was preempted/died/restarted unexpectedly")
  assert supervisor.lost_processes(leader) == [0]
  assert supervisor.lost_processes("Traceback ... ValueError: bad") is None


def test_filter_passes_output_and_holds_back_jax_fatal_log(tmp_path):
  import io
  out, details = io.BytesIO(), io.BytesIO()
  f = supervisor._Filter(out, details)  # noqa: SLF001
  f.feed(b"train:  50%|#####  | 2/4\rtrain:  75%")  # A bar's partial line passes at once.
  assert out.getvalue() == b"train:  50%|#####  | 2/4\rtrain:  75%"
  f.feed(b"\nW1202 13:50:19.1 1 x.py:1] a warning\ntrain:  80%E120")  # A log line right after the bar, cut.
  f.feed(b"2 13:50:19.2 1 coordination_service.cc:1] Polled an err")
  f.feed(b"or (stopped sending heartbeats):\n1\nF1202 13:50:19.3 1 client.h:80] Terminating process\n"
         b"*** Check failure stack trace: ***\n  @ 0x1\n")
  f.close()
  assert b"Polled" not in out.getvalue()
  assert out.getvalue().endswith(b"75%\nW1202 13:50:19.1 1 x.py:1] a warning\ntrain:  80%")
  # From the runtime's first error on, all is held back, the message's continuation lines too.
  assert details.getvalue().startswith(b"E1202 13:50:19.2 1 coordination_service.cc:1] Polled an error (stopped "
                                       b"sending heartbeats):\n1\nF1202")
  assert b"  @ 0x1\n" in details.getvalue()


def test_filter_holds_back_the_warning_that_the_service_is_gone():
  import io
  out, details = io.BytesIO(), io.BytesIO()
  f = supervisor._Filter(out, details)  # noqa: SLF001
  f.feed(b"W1202 15:54:01.1 1 client.cc:1] distributed: a harmless warning\n")  # Passes: no sign of a loss.
  # When process 0 dies, the preemption watcher's warning comes first (seen with jax 0.10.2).
  f.feed(b"W1202 15:54:02.6 1 preemption_sync_manager.cc:147] Failed to retrieve preemption notice from "
         b"coordination service: UNAVAILABLE: Socket closed\nAdditional GRPC error information from remote target "
         b"coordination_service while calling /xla.coordination.CoordinationService/GetKeyValue:\n")
  f.close()
  assert out.getvalue() == b"W1202 15:54:01.1 1 client.cc:1] distributed: a harmless warning\n"
  assert details.getvalue().startswith(b"W1202 15:54:02.6") and b"coordination_service while" in details.getvalue()
