"""Latent caching: encode an image dataset once with the KL VAE into ArrayRecord shards.

Input: a manifest as the data pipeline reads it (`data/manifest.py`: JSONL lines
`{"image": "relative/path.png", "caption": "..."}` or LLaVA conversations), paths relative to the
manifest's directory. Records go through the pipeline's own `decode.decode_record` (data/images.py:
orientation, transparency, the crop or pad; the same checks), then are scaled to [-1, 1], so cached
latents encode exactly the pixels the pipeline sees and a record the pipeline would skip is skipped here.

Output, in `out_dir`:
- `latents-SSSSS-of-NNNNN.array_record`: record i of the manifest, if good, is in shard
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
- `latents-SSSSS-of-NNNNN.skipped.json`: the shard's count written, how many of those were upscaled
  and its skipped records ([["FILE:LINE", reason], ...]), so a resumed run can report on the whole cache.
- `cache_info.json`: the settings, the image settings among them (`image`: config.data's
  image_resize, image_background, min_image_size); a resumed run must match them, and training
  from the cache checks them against its config (latent_source.py).
Shards are written to a temporary name (`.tmp`, removed on any error or interruption and at the
next start) and renamed when complete, so a rerun skips finished shards and redoes only the rest.
The posterior moments are a deterministic function of the image and the parameters, so reruns
write the same bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from tqdm import tqdm

from mmar_jax.data import images
from mmar_jax.data.decode import decode_record
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


def _encode_fn(tokenizer: tokenizers.KLVAE, sharding):
  """Jitted (params, pixels) -> (moments, moments of the flipped pixels), batch sharded."""

  def encode(params, pixels):
    both = jnp.concatenate([pixels, pixels[:, :, ::-1]], axis=0)  # NHWC: axis 2 is the width.
    moments = tokenizer.moments(params, both)
    return jnp.split(moments, 2, axis=0)

  return jax.jit(encode, in_shardings=(None, sharding), out_shardings=None) if sharding else jax.jit(encode)


@dataclasses.dataclass(frozen=True)
class CacheSummary:
  """What `cache_latents` did: totals over the whole cache, resumed shards included."""
  paths: list[str]                 # every shard of the cache, in order
  written: int                     # records in the finished shards
  upscaled: int                    # of them, images smaller than the target size, enlarged
  skipped: dict[str, int]          # bad records by reason (the reason's text before its first ':')
  resumed_shards: int              # shards found finished and left untouched
  stopped: bool                    # `should_stop` said stop before the last shard: rerun to resume

  def lines(self) -> list[str]:
    done = "stopped early (rerun the same command to resume)" if self.stopped else "complete"
    lines = [f"{self.written} records in {len(self.paths)} shards ({done}; {self.resumed_shards} of them "
             f"finished by an earlier run), {sum(self.skipped.values())} skipped"]
    lines += [f"  skipped {count}: {reason}" for reason, count in sorted(self.skipped.items())]
    lines += [f"{self.upscaled} of the records written were upscaled (smaller than the target size)"]
    return lines


def image_settings(image: images.ImageConfig) -> dict:
  """What cache_info.json's `image` holds: the settings besides the size that decide the pixels encoded."""
  return {"resize": image.resize, "background": image.background, "min_size": image.min_size}


def _upscaled(batch: list[dict]) -> int:
  return sum(bool(r["upscaled"]) for r in batch)


def skip_file_path(path: str) -> str:
  return path.removesuffix(".array_record") + ".skipped.json"


def read_skip_file(shard_path: str) -> dict:
  with open(skip_file_path(shard_path)) as f:
    return json.load(f)


def cache_latents(manifest: str, out_dir: str, tokenizer: tokenizers.KLVAE, params, *, image: images.ImageConfig,
                  batch_size: int = 8, records_per_shard: int = 1024, sharding: jax.sharding.Sharding | None = None,
                  progress: bool = True, should_stop: Callable[[], bool] = lambda: False) -> CacheSummary:
  """Writes the shards for `manifest` (skipping finished ones) and says what it did.

  Records go through the training pipeline's own decode (`decode.decode_record` with `image`, the
  config's image settings), so a record the pipeline would skip is skipped here: named once as
  `skipped FILE:LINE: reason` and counted by reason, never written; images smaller than the target
  are counted as upscaled. Manifest record i belongs to shard i // records_per_shard whether good
  or bad, so shards are stable across reruns; each finished shard keeps its skipped records beside
  it (`*.skipped.json`), so a resumed run's counts cover the whole cache. `sharding` places each
  pixel batch (e.g. batch over the mesh's data axes); batches are padded to `batch_size` so one
  program is compiled. `should_stop` is asked between batches (a SIGTERM handler's flag): the
  unfinished shard is then dropped and the summary says `stopped`.
  """
  if image.size != tokenizer.image_size:
    raise ValueError(f"the images are made {image.size}px but the VAE encodes {tokenizer.image_size}px")
  source = ManifestSource(manifest)
  if not len(source):
    raise ValueError(f"{manifest} has no records")
  root = os.path.dirname(os.path.abspath(manifest))
  num_shards = -(-len(source) // records_per_shard)
  os.makedirs(out_dir, exist_ok=True)
  info = {"manifest": os.path.abspath(manifest), "num_records": len(source), "num_shards": num_shards,
          "records_per_shard": records_per_shard, "image_size": tokenizer.image_size,
          "vae": dataclasses.asdict(tokenizer.config.vae),
          "vae_checkpoint": tokenizer.config.vae_checkpoint, "image": image_settings(image)}
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
  for path in paths:  # An interrupted run's partial shard: redone below, never read.
    if os.path.exists(path + ".tmp"):
      os.remove(path + ".tmp")
  finished = [i for i, p in enumerate(paths) if os.path.exists(p) and os.path.exists(skip_file_path(p))]
  written, upscaled, skipped = 0, 0, collections.Counter()
  for i in finished:
    kept = read_skip_file(paths[i])
    written, upscaled = written + kept["written"], upscaled + kept["upscaled"]
    skipped.update(reason.split(":")[0] for _, reason in kept["skipped"])
  encode = _encode_fn(tokenizer, sharding)
  if isinstance(sharding, jax.sharding.NamedSharding):
    # Parameters replicated on the same mesh (loaded ones sit committed on one device).
    params = jax.device_put(params, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
  done_records = sum(len(range(i * records_per_shard, min(len(source), (i + 1) * records_per_shard)))
                     for i in finished)
  bar = tqdm(total=len(source), initial=done_records, unit="img", desc="caching latents", disable=not progress)

  def write_batch(writer, batch):
    pixels = np.zeros((batch_size, tokenizer.image_size, tokenizer.image_size, 3), np.float32)
    for j, r in enumerate(batch):
      pixels[j] = r["image"].astype(np.float32) / 127.5 - 1.0  # The VAE's [-1, 1].
    moments, moments_flip = jax.device_get(encode(params, pixels))
    for j, r in enumerate(batch):
      writer.write(write_record(r["key"], r["caption"], moments[j], moments_flip[j],
                                image_size=tokenizer.image_size, qa=r["qa"]))

  stopped = False
  try:
    for shard in (i for i in range(num_shards) if i not in finished):
      tmp, shard_written, shard_upscaled, shard_skipped, batch = paths[shard] + ".tmp", 0, 0, [], []
      writer = ArrayRecordWriter(tmp, "group_size:1")
      try:
        for index in range(shard * records_per_shard, min(len(source), (shard + 1) * records_per_shard)):
          if should_stop():
            stopped = True
            break
          record = source[index]
          decoded = decode_record(record, image)
          if "corrupt" in decoded:
            where = f"{manifest}:{record.get('line', index + 1)}"
            shard_skipped.append((where, decoded["corrupt"]))
            skipped[decoded["corrupt"].split(":")[0]] += 1
            tqdm.write(f"skipped {where}: {decoded['corrupt']}", file=sys.stderr)
          else:
            batch.append({**decoded, "key": os.path.relpath(record["image"], root)})
          if len(batch) == batch_size:
            write_batch(writer, batch)
            shard_written, shard_upscaled = shard_written + len(batch), shard_upscaled + _upscaled(batch)
            batch = []
          bar.update(1)
        if batch and not stopped:
          write_batch(writer, batch)
          shard_written, shard_upscaled = shard_written + len(batch), shard_upscaled + _upscaled(batch)
      finally:
        writer.close()
      if stopped:
        os.remove(tmp)
        break
      with open(skip_file_path(paths[shard]), "w") as f:
        json.dump({"written": shard_written, "upscaled": shard_upscaled, "skipped": shard_skipped}, f, indent=1)
      os.replace(tmp, paths[shard])  # Atomic, and after its skip file: a shard under its final name is complete.
      written, upscaled = written + shard_written, upscaled + shard_upscaled
  except BaseException:  # An error or Ctrl-C: no partial shard is left behind.
    for path in paths:
      if os.path.exists(path + ".tmp"):
        os.remove(path + ".tmp")
    raise
  finally:
    bar.close()
  return CacheSummary(paths=paths, written=written, upscaled=upscaled, skipped=dict(skipped),
                      resumed_shards=len(finished), stopped=stopped)
