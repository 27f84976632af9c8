"""Log records above the training progress bar instead of through it.

A record written to the terminal while tqdm's bar is shown lands in the middle of the bar's line
and leaves a broken copy of the bar behind. While `logs_above_the_bar` is active, each console
handler of the root logger (absl's, under `app.run`, or a plain StreamHandler) is stood in for by
one that formats the same way and writes with `tqdm.write`, which clears the bar, prints the
line and redraws the bar beneath it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import tqdm
from absl import logging as absl_logging


class _AboveTheBar(logging.Handler):
  """Formats as `handler` does and writes through tqdm.write to the stream it wrote to."""

  def __init__(self, handler: logging.Handler, stream):
    super().__init__(handler.level)
    # absl's handler formats with its inner python handler's formatter (its "W1204 12:00:00 ..." prefix).
    self.setFormatter(getattr(handler, "python_handler", handler).formatter)
    self.filters = list(handler.filters)
    self._stream = stream

  def emit(self, record: logging.LogRecord) -> None:
    try:
      tqdm.tqdm.write(self.format(record), file=self._stream)
    except Exception:  # pylint: disable=broad-except  # A log line must never end the run.
      self.handleError(record)


def _console_stream(handler: logging.Handler):
  """The terminal stream `handler` writes to, or None when it writes elsewhere (a file, a test's capture)."""
  if isinstance(handler, absl_logging.ABSLHandler):
    handler = handler.python_handler
  stream = getattr(handler, "stream", None)
  return stream if isinstance(handler, logging.StreamHandler) and stream in (sys.stdout, sys.stderr) else None


@contextlib.contextmanager
def logs_above_the_bar() -> Iterator[None]:
  """While active, the root logger's console handlers write with tqdm.write (see the module's docstring)."""
  root = logging.getLogger()
  original = list(root.handlers)
  root.handlers = [_AboveTheBar(h, stream) if (stream := _console_stream(h)) is not None else h for h in original]
  try:
    yield
  finally:
    root.handlers = original
