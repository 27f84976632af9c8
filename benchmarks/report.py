"""Benchmarks' figures as one JSON line, so that runs can be compared by a script.

    parser = argparse.ArgumentParser(...); report.add_json_flag(parser); args = parser.parse_args()
    ...
    report.emit(args, "flops", {"backend": ..., "rows": [...]})

`emit` prints nothing unless `--json` was given; then it prints one line, `{"benchmark": name,
...figures}`, after the human-readable table (so `tail -n 1` of the output is the JSON).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_json_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line (last)")


def emit(args: argparse.Namespace, benchmark: str, figures: dict[str, Any]) -> None:
  if args.json:
    # default=float: numpy and jax scalars in the figures print as numbers.
    print(json.dumps({"benchmark": benchmark} | figures, default=float, sort_keys=False), flush=True)
