"""mmar-jax prepare-data --cache-latents: a JSONL image manifest -> cached VAE moments (ArrayRecord).

The VAE is --config's tokenizer section (kind 'kl16', vae_checkpoint set). The encoder runs
on every device with the batch sharded over the mesh's data axes; --batch-size must be a
multiple of the device count. A bad record (not UTF-8, not JSON, a field missing, an image missing
or undecodable) is skipped and named once as `skipped FILE:LINE: reason`; the summary at the end
counts them by reason, says how many images were smaller than config.tokenizer.image_size and
upscaled, and counts the records whose text training will cut to fit --config's data.seq_len or
that hold words config.data.tokenizer does not know (when that tokenizer loads). Images become
pixels as training makes them (data/images.py, config.data's image_resize, image_background and
min_image_size; an image below the minimum is skipped), and cache_info.json records those
settings, so training from the cache checks them. Rerunning the same command resumes: finished
shards are skipped, and SIGTERM (exit 143) or Ctrl-C (exit 130) leaves no partial shard behind.
"""

from __future__ import annotations

import signal
import sys
import threading

import flax.linen as nn
import jax
from absl import flags
from ml_collections import config_flags

from mmar_jax import configs
from mmar_jax.convert import vae_ckpt
from mmar_jax.data import images, latent_cache, sequences, text_accounting, text_tokenizer
from mmar_jax.models import tokenizers

_CACHE = flags.DEFINE_bool("cache-latents", False, "Encode the images to VAE moments (the only mode so far).")
_MANIFEST = flags.DEFINE_string("manifest", None, 'JSONL: {"image": "rel/path.png", "caption": "..."} a line.',
                                required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory for the shards (created; reused to resume).",
                           required=True)
_BATCH = flags.DEFINE_integer("batch-size", 8, "Images a step (the flipped copies double it).")
_PER_SHARD = flags.DEFINE_integer("records-per-shard", 1024, "Images per ArrayRecord shard.")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/mmar_0p5b.py",
                                          "Config whose tokenizer section is the VAE.", lock_config=True)


def _text_lines(config) -> list[str]:
  """The manifest's texts against the room --config's data.seq_len leaves (text_accounting.manifest_lines)."""
  try:
    tokenizer = text_tokenizer.load(config.data.tokenizer)
  except Exception as e:  # pylint: disable=broad-except  # The cache needs only the VAE: the check is skipped.
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    return [f"text: not checked against data.seq_len: {why}"]
  room = sequences.SequenceConfig.from_config(config).text_room
  return text_accounting.manifest_lines(_MANIFEST.value, tokenizer, room)


def main(argv):
  del argv
  if not _CACHE.value:
    raise flags.ValidationError("prepare-data needs --cache-latents (the only mode so far)")
  config = _CONFIG.value
  configs.validate_tokenizer(config.tokenizer)
  configs.validate_images(config.data)
  if config.tokenizer.kind != "kl16":
    raise flags.ValidationError(f"--cache-latents needs config.tokenizer.kind='kl16', got "
                                f"{config.tokenizer.kind!r} (pixel patches need no cache)")
  n = jax.device_count()
  if _BATCH.value % n:
    raise flags.ValidationError(f"--batch-size={_BATCH.value} must be a multiple of the {n} devices")
  tokenizer = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(config))
  params = vae_ckpt.tokenizer_params(tokenizer)
  mesh = jax.make_mesh((n, 1, 1), configs.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  terminated = threading.Event()  # A scheduler's SIGTERM: stop between batches, the shards so far kept.
  signal.signal(signal.SIGTERM, lambda *_: terminated.set())
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(config.mesh.logical_axis_rules):
      summary = latent_cache.cache_latents(_MANIFEST.value, _OUT.value, tokenizer, params,
                                           image=images.ImageConfig.from_config(config), batch_size=_BATCH.value,
                                           records_per_shard=_PER_SHARD.value, sharding=batch,
                                           should_stop=terminated.is_set)
  except KeyboardInterrupt:
    print("mmar-jax prepare-data: interrupted; the finished shards are kept, rerun the same command to resume",
          file=sys.stderr)
    sys.exit(130)
  print(f"{_OUT.value}: " + "\n".join(summary.lines()))
  if summary.stopped:
    print("mmar-jax prepare-data: stopped by SIGTERM; rerun the same command to resume", file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM, as if the signal had ended the process.
  print("\n".join(_text_lines(config)))
  if not summary.written:
    raise ValueError(f"--manifest={_MANIFEST.value}: no record could be cached "
                     f"({sum(summary.skipped.values())} skipped)")
