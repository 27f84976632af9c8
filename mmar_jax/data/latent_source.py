"""The latent cache (`prepare-data --cache-latents`, data/latent_cache.py) as a grain data source.

Records carry the image's posterior moments and its mirror's instead of pixels; the pipeline
builds their task sequences as it does a manifest's (captions and conversations alike), with
`image_moments` [M, s/16, s/16, 2z] float32 in the row where pixel sources have `images`. Which
of the two moments a row gets is drawn per record per epoch from the pipeline's seed (pipeline.py,
MAR's random flip of its cached moments); the train step samples the latent from them.

Opening the source checks the cache against the config (image size and the image settings that
decide its pixels, VAE architecture, the format of each shard's first record), so a cache that
cannot feed the model fails at start-up with one line naming the field or file, not in a worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import SupportsIndex

from absl import logging
from PIL import ImageColor

import grain
from mmar_jax.data import decode, images, latent_cache


@dataclasses.dataclass(frozen=True)
class LatentsConfig:
  """Where the cache is and what the model expects of it (config.data.latents_dir, config.tokenizer)."""
  dir: str
  image: images.ImageConfig  # The pixels the model's config makes; the cache's must be the same.
  vae: dict  # dataclasses.asdict(kl_vae.VAEConfig) of the model's tokenizer, as cache_info.json stores it.
  flip: bool  # Draw the mirrored image's moments for half the records each epoch.

  @classmethod
  def from_config(cls, config) -> LatentsConfig:
    from mmar_jax.models import kl_vae  # Flax: only the training process builds this config, never a worker.
    return cls(dir=config.data.latents_dir, image=images.ImageConfig.from_config(config),
               vae=dataclasses.asdict(kl_vae.VAEConfig.from_config(config)), flip=config.data.latents_flip)


def read_info(directory: str) -> dict:
  """cache_info.json of a cache directory; a directory that is no cache is refused naming the field."""
  path = os.path.join(directory, latent_cache.INFO_FILE)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config.data.latents_dir={directory!r} does not exist")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.data.latents_dir={directory!r} holds no {latent_cache.INFO_FILE}: "
                            "not a cache written by prepare-data --cache-latents")
  with open(path) as f:
    return json.load(f)


def _check_matches(config: LatentsConfig, info: dict) -> None:
  where = os.path.join(config.dir, latent_cache.INFO_FILE)
  if info["image_size"] != config.image.size:
    raise ValueError(f"{where}: the cache holds {info['image_size']}px images but config.tokenizer.image_size="
                     f"{config.image.size}; train with the cache's size or cache again")
  _check_image_settings(where, config.image, info.get("image"))
  # The compute dtype only rounds the moments; everything else decides what the latents mean.
  for field, value in config.vae.items():
    if field != "dtype" and json.loads(json.dumps(value)) != info["vae"].get(field):
      raise ValueError(f"{where}: the cache was encoded with vae {field}={info['vae'].get(field)} but "
                       f"config.tokenizer.vae_{field}={value}; the model's VAE must be the cache's")


def _check_image_settings(where: str, image: images.ImageConfig, cached: dict | None) -> None:
  """The resize and background decide the cached pixels: a difference is refused. The minimum only
  decided which records the cache holds: a difference is a warning."""
  if cached is None:
    logging.warning("%s records no image settings (a cache from before them: MAR's centre crop, alpha "
                    "dropped, EXIF orientation ignored); config.data's image_* settings are not checked", where)
    return
  if cached["resize"] != image.resize:
    raise ValueError(f"{where}: the cache was made with image resize={cached['resize']!r} but "
                     f"config.data.image_resize={image.resize!r}; train with the cache's setting or cache again")
  if ImageColor.getrgb(cached["background"])[:3] != image.background_rgb:
    raise ValueError(f"{where}: the cache was made with image background={cached['background']!r} but "
                     f"config.data.image_background={image.background!r}; train with the cache's setting or "
                     "cache again")
  if cached["min_size"] != image.min_size:
    logging.warning("%s: the cache was made with image min_size=%d but config.data.min_image_size=%d; the cache "
                    "holds the records its own minimum let through", where, cached["min_size"], image.min_size)


class LatentCacheSource(grain.sources.RandomAccessDataSource):
  """The cache's records in manifest order, as raw bytes; `decode_record` parses them in the workers."""

  def __init__(self, config: LatentsConfig):
    info = read_info(config.dir)
    _check_matches(config, info)
    self._dir = config.dir
    self._paths = [os.path.join(config.dir, latent_cache.shard_name(i, info["num_shards"]))
                   for i in range(info["num_shards"])]
    missing = [p for p in self._paths if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f"{missing[0]} is missing ({len(missing)} of {len(self._paths)} shards): the cache "
                              "is incomplete; rerun the same prepare-data command to finish it")
    self._source = grain.sources.ArrayRecordDataSource(self._paths)
    # A shard holds its good records only: its skip file says how many (prepare-data's accounting).
    counts = [latent_cache.read_skip_file(p)["written"] for p in self._paths]
    if len(self._source) != sum(counts):
      raise ValueError(f"{config.dir}: {len(self._source)} records in the shards, their .skipped.json files "
                       f"say {sum(counts)}; rerun prepare-data into a new --out")
    latent = config.image.size // 2 ** (len(config.vae["channel_mult"]) - 1)
    expected = (latent, latent, 2 * config.vae["z_channels"])
    first = 0
    for path, count in zip(self._paths, counts):  # One record a shard: old or foreign files fail here, named.
      if count:
        record = latent_cache.read_record(self._source[first], f"{path}: record 0")
        if record["moments"].shape != expected:
          raise ValueError(f"{path}: record 0 holds moments of shape {record['moments'].shape}, the model's "
                           f"tokenizer expects {expected}")
      first += count

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: SupportsIndex) -> dict:  # grain passes numpy ints too.
    return {"data": self._source[index], "source": self._dir, "index": int(index)}

  def __repr__(self) -> str:
    return f"LatentCacheSource({self._dir!r}, {len(self)} records)"


def decode_record(element: dict) -> dict:
  """A cached record as {'moments', 'moments_flip', 'caption', 'qa', 'source', 'index'}, or a corrupt
  marker (decode.py) saying why not."""
  try:
    record = latent_cache.read_record(element["data"], f"{element['source']}: record {element['index']}")
  except ValueError as e:
    return decode.corrupt(element, str(e))
  caption, qa, error = decode.clean_texts(record)
  if error:
    return decode.corrupt(element, error)
  return {"moments": record["moments"], "moments_flip": record["moments_flip"], "caption": caption, "qa": qa,
          "source": element["source"], "index": element["index"]}
