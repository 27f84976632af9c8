"""Narrow config views built from the schema, for tests: the one way a test makes a `BackboneConfig`,
`HeadConfig`, ... so that every field it does not set is the schema's default, never a literal
that can drift from it.

    view(HeadConfig, {"head.depth": 2, "head.width": 64, "head.dtype": "float32"}, token_channels=2)

`values` are dotted config paths set on `configs.base_config()` (unvalidated: tests may build
configs smaller than validation allows); keyword `fields` then replace fields of the view itself,
for values that a config only implies (a toy problem's token width).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from mmar_jax import configs


def view(cls, values: Mapping[str, Any] = (), *args, base: ml_collections.ConfigDict | None = None, **fields):
  """`cls.from_config(configs.with_values(values, base), *args)` with `fields` replaced."""
  built = cls.from_config(configs.with_values(values, base), *args)
  return dataclasses.replace(built, **fields) if fields else built
