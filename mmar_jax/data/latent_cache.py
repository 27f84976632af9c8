"""Latent caching: encode an image dataset once with the KL VAE into ArrayRecord shards.

Input: a manifest as the data pipeline reads it (`data/manifest.py`: JSONL lines
`{"image": "relative/path.png", "caption": "..."}` or LLaVA conversations), paths relative to the
manifest's directory. Images go through the pipeline's own `decode.load_image` (MAR's centre
crop), then are scaled to [-1, 1], so cached latents encode exactly the pixels the pipeline sees.

Output, in `out_dir`:
- `latents-SSSSS-of-NNNNN.array_record`: record i of the manifest is in shard
  i // records_per_shard. Each record is a msgpack map (`write_record` / `read_record`) of plain
  msgpack types, arrays as raw little-endian bytes, so grain's workers decode it with msgpack and
  numpy alone:
    format        "mmar-latents", version 1 (FORMAT, VERSION): anything else is refused, naming the file
    key           str   the manifest's image path
    caption       str   ('' for a conversation)
    qa            [[question, answer], ...]  LLaVA conversations' pairs ([] for a caption)
    image_size    int   the pixels' side the VAE encoded
    moments       float32 [s/16, s/16, 2 * z]: the posterior's [mean | logvar], unclipped, NHWC
    moments_flip  the same for the horizontally flipped image (MAR's flip augmentation, cached)
  Moments stay float32 as the encoder returns them: the exp(logvar / 2) of a sample amplifies a
  rounded logvar, bfloat16 would make cached and on-the-fly tokens differ, and MAR caches float32.
  Tokens are `KLVAE.tokens_from_moments(moments, rng)` (clip, sample, scale, group).
- `cache_info.json`: the settings; a resumed run must match them.
Shards are written to a temporary name and renamed when complete, so a rerun after an
interruption skips finished shards and redoes only the rest. The posterior moments are a
deterministic function of the image and the parameters, so reruns write the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from tqdm import tqdm

from mmar_jax.data.decode import load_image as load_pixels
from mmar_jax.data.manifest import ManifestSource
if TYPE_CHECKING:  # Annotations only: grain's workers import this module and need no flax models.
  from mmar_jax.models import tokenizers

INFO_FILE = "cache_info.json"


def shard_name(index: int, num_shards: int) -> str:
  return f"latents-{index:05d}-of-{num_shards:05d}.array_record"


FORMAT, VERSION = "mmar-latents", 1
_ARRAYS = ("moments", "moments_flip")


def write_record(key: str, caption: str, moments: np.ndarray, moments_flip: np.ndarray, *, image_size: int,
                 qa: list[tuple[str, str]] = ()) -> bytes:
  """One cached image as msgpack bytes (see the module docstring for the fields)."""
  record = {"format": FORMAT, "version": VERSION, "key": key, "caption": caption,
            "qa": [[q, a] for q, a in qa], "image_size": int(image_size)}
  for name, array in zip(_ARRAYS, (moments, moments_flip)):
    array = np.ascontiguousarray(array, "<f4")
    record[name] = {"shape": list(array.shape), "data": array.tobytes()}
  return msgpack.packb(record, use_bin_type=True)


def read_record(data: bytes, where: str = "record") -> dict:
  """The inverse of `write_record`; `where` (file and index) names the record in the error a foreign
  or older record raises."""
  try:
    record = msgpack.unpackb(data, raw=False)
  except (msgpack.UnpackException, ValueError) as e:
    raise ValueError(f"{where}: not a latent cache record ({type(e).__name__}: {e})") from None
  if not isinstance(record, dict) or (record.get("format"), record.get("version")) != (FORMAT, VERSION):
    found = (record.get("format"), record.get("version")) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"{where}: not a {FORMAT!r} version {VERSION} record (found {found}); rerun "
                     f"prepare-data --cache-latents with this version into a new --out")
  for name in _ARRAYS:
    stored = record[name]
    record[name] = np.frombuffer(stored["data"], "<f4").reshape(stored["shape"])
  record["qa"] = [tuple(pair) for pair in record["qa"]]
  return record


def read_shard(path: str) -> list[dict]:
  """Every record of one shard, decoded (for tests and inspection; pipelines use grain)."""
  reader = ArrayRecordReader(path)
  try:
    return [read_record(r, f"{path}: record {i}") for i, r in enumerate(reader.read_all())]
  finally:
    reader.close()


def read_manifest(path: str) -> list[dict]:
  """The manifest's records ({'key', 'path', 'caption', 'qa'}) through the pipeline's own ManifestSource.

  The cache must be complete, so a record the source cannot parse fails here, by line.
  """
  source = ManifestSource(path)
  root = os.path.dirname(os.path.abspath(path))
  records = []
  for i in range(len(source)):
    record = source[i]
    if "error" in record:
      raise ValueError(f"{path}: record {i}: {record['error']}")
    records.append({"key": os.path.relpath(record["image"], root), "path": record["image"],
                    "caption": record["caption"], "qa": record["qa"]})
  return records


def load_image(path: str, image_size: int) -> np.ndarray:
  """An RGB image as float32 [image_size, image_size, 3] in [-1, 1], cropped as the pipeline crops."""
  return load_pixels(path, image_size).astype(np.float32) / 127.5 - 1.0


def _encode_fn(tokenizer: tokenizers.KLVAE, sharding):
  """Jitted (params, pixels) -> (moments, moments of the flipped pixels), batch sharded."""

  def encode(params, pixels):
    both = jnp.concatenate([pixels, pixels[:, :, ::-1]], axis=0)  # NHWC: axis 2 is the width.
    moments = tokenizer.moments(params, both)
    return jnp.split(moments, 2, axis=0)

  return jax.jit(encode, in_shardings=(None, sharding), out_shardings=None) if sharding else jax.jit(encode)


def cache_latents(manifest: str, out_dir: str, tokenizer: tokenizers.KLVAE, params, *, batch_size: int = 8,
                  records_per_shard: int = 1024, sharding: jax.sharding.Sharding | None = None,
                  progress: bool = True) -> list[str]:
  """Writes the shards for `manifest` (skipping finished ones) and returns all shard paths.

  `sharding` places each pixel batch (e.g. batch over the mesh's data axes); batches are padded
  to `batch_size` so one program is compiled.
  """
  records = read_manifest(manifest)
  if not records:
    raise ValueError(f"{manifest} has no records")
  num_shards = -(-len(records) // records_per_shard)
  os.makedirs(out_dir, exist_ok=True)
  info = {"manifest": os.path.abspath(manifest), "num_records": len(records), "num_shards": num_shards,
          "records_per_shard": records_per_shard, "image_size": tokenizer.image_size,
          "vae": dataclasses.asdict(tokenizer.config.vae),
          "vae_checkpoint": tokenizer.config.vae_checkpoint}
  info_path = os.path.join(out_dir, INFO_FILE)
  if os.path.exists(info_path):
    with open(info_path) as f:
      old = json.load(f)
    if old != json.loads(json.dumps(info)):
      raise ValueError(f"{out_dir} holds a cache made with other settings: {old}; use a new --out")
  else:
    with open(info_path, "w") as f:
      json.dump(info, f, indent=2)

  paths = [os.path.join(out_dir, shard_name(i, num_shards)) for i in range(num_shards)]
  todo = [i for i, p in enumerate(paths) if not os.path.exists(p)]
  done_records = sum(min(records_per_shard, len(records) - i * records_per_shard)
                     for i in range(num_shards) if i not in todo)
  encode = _encode_fn(tokenizer, sharding)
  if isinstance(sharding, jax.sharding.NamedSharding):
    # Parameters replicated on the same mesh (loaded ones sit committed on one device).
    params = jax.device_put(params, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
  bar = tqdm(total=len(records), initial=done_records, unit="img", desc="caching latents", disable=not progress)
  for shard in todo:
    chunk = records[shard * records_per_shard:(shard + 1) * records_per_shard]
    tmp = paths[shard] + ".tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    for start in range(0, len(chunk), batch_size):
      batch = chunk[start:start + batch_size]
      pixels = np.zeros((batch_size, tokenizer.image_size, tokenizer.image_size, 3), np.float32)
      for j, r in enumerate(batch):
        pixels[j] = load_image(r["path"], tokenizer.image_size)
      moments, moments_flip = jax.device_get(encode(params, pixels))
      for j, r in enumerate(batch):
        writer.write(write_record(r["key"], r["caption"], moments[j], moments_flip[j],
                                  image_size=tokenizer.image_size, qa=r["qa"]))
      bar.update(len(batch))
    writer.close()
    os.replace(tmp, paths[shard])  # Atomic: a shard under its final name is complete.
  bar.close()
  return paths
