"""Log records while the progress bar is shown land on lines of their own, above the bar."""

from __future__ import annotations

import logging
import sys

import tqdm

from mmar_jax.train import progress


def _log_under_a_bar(redirect: bool) -> None:
  """Draws a bar on stderr, logs one warning and closes the bar."""
  logger = logging.getLogger("tests.progress")
  handler = logging.StreamHandler(sys.stderr)  # The console handler a CLI has (absl's writes the same way).
  handler.setFormatter(logging.Formatter("W %(message)s"))
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    bar = tqdm.tqdm(total=6, desc="train", file=sys.stderr, mininterval=0)
    bar.update(1)
    if redirect:
      with progress.logs_above_the_bar():
        logger.warning("skipping corrupt record m.jsonl:3")
      assert root.handlers[-1] is handler  # Put back.
    else:
      logger.warning("skipping corrupt record m.jsonl:3")
    bar.close()
  finally:
    root.removeHandler(handler)


def test_a_warning_gets_a_line_of_its_own(capsys):
  _log_under_a_bar(redirect=False)
  # Without the redirect, the record is glued to the bar's line.
  lines = capsys.readouterr().err.split("\n")
  assert not any(line.split("\r")[-1] == "W skipping corrupt record m.jsonl:3" for line in lines), lines
  _log_under_a_bar(redirect=True)
  lines = capsys.readouterr().err.split("\n")
  assert any(line.split("\r")[-1] == "W skipping corrupt record m.jsonl:3" for line in lines), lines
