"""Lost processes end a multi-process run with one line, not jax's fatal abort.

When a process of a job dies, jax's coordination service notices (a missed heartbeat after
config.distributed.heartbeat_timeout_s, or at once when the dead one is process 0, which hosts
the service) and the survivors' jax runtime ends them with SIGABRT and a fatal log, from a C++
thread that Python cannot intercept (jax 0.10.2 offers no usable callback). So in a
multi-process run `mmar-jax train` is two processes: this small supervisor, which starts the
real training as its child, passes its output and signals through, and when the child is
aborted that way prints one line instead, naming the lost process and the last good
checkpoint, and exits with LOST_EXIT. The child's fatal log goes to a file the line names.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading

CHILD_ENV = "MMAR_JAX_SUPERVISED"  # Set in the child: it trains, it does not supervise again.
LOST_EXIT = 75  # EX_TEMPFAIL: the job lost a process; rerun it to resume from the last checkpoint.

_GLOG = re.compile(rb"[IWEF]\d{4} \d\d:\d\d:\d\d")  # A glog / absl log line's start, e.g. 'E1202 13:51:19'.
_GLOG_START = re.compile(rb"[IWEF]\d{0,4}( (\d\d?(:\d{0,2}){0,2})?)?$")  # What could still become one.
_DISTRIBUTED = re.compile(rb"coordination|distributed|heartbeat|preemption|Gloo|Terminating process", re.I)
# A warning that the service is gone (e.g. the preemption watcher's 'UNAVAILABLE: Socket closed'
# when process 0 dies) is the first sign of a loss, ahead of the fatal log.
_UNREACHABLE = re.compile(rb"UNAVAILABLE|Socket closed|unhealthy", re.I)


def is_child(env=os.environ) -> bool:
  return env.get(CHILD_ENV) == "1"


def lost_processes(log: str) -> list[int] | None:
  """The processes jax's fatal log says were lost ([] when it names none); None when the log is
  not jax's distributed-runtime failure at all."""
  if "JAX distributed service detected fatal errors" not in log and "heartbeat timeout" not in log:
    return None
  found = {int(m) for m in re.findall(r"Task (\d+) heartbeat timeout", log)}
  for group in re.findall(r"stopped sending heartbeats\):\s*([\d,\s]+)", log):
    found |= {int(x) for x in re.findall(r"\d+", group)}
  if "leader task" in log or "Failed to send RPC to coordination service" in log:
    found.add(0)  # The coordinator (process 0, which hosts the service) is gone.
  return sorted(found)


def last_checkpoint(directory: str) -> str:
  """'step N in DIR' for the newest complete checkpoint, or 'none in DIR'."""
  from absl import logging
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # Orbax warns about each option a reader overrides.
  try:
    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step()
  except Exception:  # noqa: BLE001 - no directory yet, or unreadable: say none.
    step = None
  finally:
    logging.set_verbosity(verbosity)
  return f"none in {directory}" if step is None else f"step {step} in {directory}"


def _die_with_parent() -> None:
  """Child side of Popen: SIGKILL when the supervisor dies (Linux), so no orphan trains on."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class _Filter:
  """Passes the child's stderr through as it comes, until the first error or fatal log line of
  jax's distributed runtime (a log line is held until complete, to judge it): from there on
  everything goes to `details`, since a lost process is on its way. Partial lines that are not
  log lines (tqdm's bar) pass at once."""

  def __init__(self, out, details):
    self.out, self.details = out, details
    self.held = b""
    self.passing = False  # The current line is already being passed through.
    self.failing = False
    self.line_open = False  # The last output ended mid-line (a bar): a new line must start first.
    self.tail = collections.deque(maxlen=400)  # Recent suppressed lines, for naming the lost process.

  def feed(self, data: bytes) -> None:
    data = self.held + data
    self.held = b""
    while data:
      nl = data.find(b"\n")
      if self.passing:
        end = len(data) if nl < 0 else nl + 1
        piece = data[:end]
        if found := _GLOG.search(piece):  # A log line that starts after a bar's text, on its line.
          self._emit(piece[:found.start()])
          data, self.passing = data[found.start():], False
          continue
        if nl < 0:  # Hold a tail that may yet become a log line's start.
          keep = next((i for i in range(max(0, end - 15), end) if _GLOG_START.match(piece[i:])), end)
          self._emit(piece[:keep])
          self.held = piece[keep:]
          return
        self._emit(piece)
        data, self.passing = data[end:], False
        continue
      if nl < 0:
        if self.failing or _GLOG.match(data) or _GLOG_START.match(data):
          self.held = data  # Judge it when complete.
          return
        self.passing = True  # Not a log line: pass it on (the branch above watches its tail).
        continue
      self._line(data[:nl + 1])
      data = data[nl + 1:]

  def _line(self, line: bytes) -> None:
    if _GLOG.match(line) and _DISTRIBUTED.search(line) and (line[:1] in b"EF" or _UNREACHABLE.search(line)):
      self.failing = True
    if self.failing:
      self.tail.append(line.decode(errors="replace"))
      self.details.write(line)
      self.details.flush()
    else:
      self._emit(line)

  def _emit(self, data: bytes) -> None:
    if data:
      self.line_open = not data.endswith(b"\n")
    self.out.write(data)
    self.out.flush()

  def close(self) -> None:
    if self.held:
      self._line(self.held)
      self.held = b""


def run(argv: list[str], workdir: str, process_id: int | None) -> int:
  """Runs `python -m mmar_jax.cli.main ARGV` as the child; returns the exit status to use."""
  checkpoint_dir = os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")
  details_path = os.path.join(tempfile.gettempdir(), f"mmar-jax-train-{os.getpid()}.log")
  details = open(details_path, "wb")
  child = subprocess.Popen([sys.executable, "-m", "mmar_jax.cli.main", *argv], env=dict(os.environ, **{CHILD_ENV: "1"}),
                           stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
  forwarded = {}
  for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
    forwarded[sig] = signal.signal(sig, lambda signum, frame: child.send_signal(signum))
  filt = _Filter(sys.stderr.buffer, details)

  def pump():
    fd = child.stderr.fileno()
    while chunk := os.read(fd, 65536):
      filt.feed(chunk)
    filt.close()

  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  rc = child.wait()
  reader.join(timeout=10)
  details.close()
  for sig, previous in forwarded.items():
    signal.signal(sig, previous)
  lost = lost_processes("".join(filt.tail))
  if rc == 0 or lost is None:  # Not a lost process after all: show what was held back.
    with open(details_path, "rb") as f:
      sys.stderr.buffer.write(f.read())
    sys.stderr.flush()
  else:
    who = ("another process" if not lost else f"process {lost[0]}" if len(lost) == 1 else
           "processes " + ", ".join(map(str, lost)))
    me = "" if process_id is None else f" (process {process_id})"
    start = "\n" if filt.line_open else ""  # After a bar's unfinished line.
    print(f"{start}mmar-jax train{me}: stopped: the job lost {who}; last good checkpoint: "
          f"{last_checkpoint(checkpoint_dir)}; rerun the same command on every process to resume (jax's log: "
          f"{details_path})", file=sys.stderr, flush=True)
    return LOST_EXIT
  os.remove(details_path)
  return rc if rc >= 0 else 128 - rc
