"""Data mixtures: several sources in one run, each drawn with its weight (grain's MapDataset.mix).

config.data.mixture (with config.data.source='mixture') lists entries "KIND:LOCATION@WEIGHT",
comma-separated (or a list of them):
  manifest:captions.jsonl@3, latents:cache/@1, tfds:coco_captions@1, synthetic:5000@0.5
KIND is one of the single sources; LOCATION is what its field would hold (data.manifest,
data.latents_dir, data.tfds_name (the other tfds_* fields apply to it), or for synthetic the
number of records). Weights are relative. Pixel sources mix with one another; latent caches mix
only with latent caches, since a batch holds either pixels or moments.
"""

from __future__ import annotations

import dataclasses

from mmar_jax.configs.schema import DATA_SOURCES
from mmar_jax.configs.validation import ConfigError

MIXABLE_KINDS = tuple(source for source in DATA_SOURCES if source != "mixture")


@dataclasses.dataclass(frozen=True)
class MixtureEntry:
  kind: str
  location: str
  weight: float


def _bad(entry: str, why: str) -> ValueError:
  # A ConfigError is a ValueError: the CLI prints it as one line and exits 2.
  return ConfigError(f"config.data.mixture entry {entry!r} {why}")


def parse(spec) -> tuple[MixtureEntry, ...]:
  """config.data.mixture (a comma-separated string or a sequence of entries) -> its entries."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  items = [item.strip() for item in items if item.strip()]
  if not items:
    raise ConfigError("config.data.mixture='' must list entries KIND:LOCATION@WEIGHT when "
                      "config.data.source='mixture'")
  entries = []
  for item in items:
    kind, colon, rest = item.partition(":")
    location, at, weight = rest.rpartition("@")
    if not colon or not at:
      raise _bad(item, "is not KIND:LOCATION@WEIGHT")
    if kind not in MIXABLE_KINDS:
      raise _bad(item, f"has kind {kind!r}; it must be one of {MIXABLE_KINDS}")
    if not location:
      raise _bad(item, "names no location")
    try:
      value = float(weight)
    except ValueError:
      raise _bad(item, f"has weight {weight!r}, not a number") from None
    if not value > 0 or value == float("inf"):
      raise _bad(item, f"has weight {weight!r}; it must be a positive number")
    if kind == "synthetic" and not (location.isdigit() and int(location) > 0):
      raise _bad(item, "must give synthetic's location as its number of records, e.g. synthetic:1000@1")
    entries.append(MixtureEntry(kind, location, value))
  if len({e.kind == "latents" for e in entries}) > 1:
    raise _bad(items[0], "mixes latent caches with pixel sources; a batch holds either pixels or moments")
  return tuple(entries)
