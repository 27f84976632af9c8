"""Validation of a config, one function a section: each failure names the field and its value.

Checks here catch what would otherwise fail deep inside a jitted function. The mesh's own arithmetic
(device counts, DCN extents) lives beside `make_mesh` in mmar_jax/train/mesh.py.
"""

from __future__ import annotations

import math

import ml_collections

from mmar_jax.configs import derived
from mmar_jax.configs.schema import (ATTENTION_IMPLS, CFG_SCHEDULES, DATA_SOURCES, DTYPES, IMAGE_RESIZES,
                                     LOGICAL_AXES, LORA_TARGETS, MASK_RATIO_DISTS, MESH_AXES, NOISE_SCHEDULES,
                                     PREDICTIONS, REMAT_POLICIES, SAMPLERS, TOKENIZER_KINDS)


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field and the value."""


def fail(field: str, value, why: str):
  raise ConfigError(f"config.{field}={value!r} {why}")


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
  """Checks the fields that would otherwise fail deep inside a jitted function.

  `num_devices`, when given, checks that the mesh shape covers exactly that many devices.
  """
  m = config.model
  for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
    if m[field] <= 0:
      fail(f"model.{field}", m[field], "must be positive")
  if m.head_dim == 0 and m.hidden_size % m.num_heads:
    fail("model.num_heads", m.num_heads, f"must divide config.model.hidden_size={m.hidden_size} "
          "(or set config.model.head_dim)")
  if m.num_heads % m.num_kv_heads:
    fail("model.num_kv_heads", m.num_kv_heads, f"must divide config.model.num_heads={m.num_heads}")
  if derived.head_dim(m) % 2:
    fail("model.head_dim", derived.head_dim(m), "must be even (rotary embeddings rotate pairs)")
  for field, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES), ("remat_policy", REMAT_POLICIES),
                         ("attention_impl", ATTENTION_IMPLS)):
    if m[field] not in allowed:
      fail(f"model.{field}", m[field], f"must be one of {allowed}")
  if not 0 <= m.hf_vocab_size <= m.vocab_size:
    fail("model.hf_vocab_size", m.hf_vocab_size, f"must be in [0, config.model.vocab_size={m.vocab_size}] "
          "(0 = not imported from Hugging Face)")
  if m.ce_chunk_size < 0:
    fail("model.ce_chunk_size", m.ce_chunk_size, "must be >= 0 (0 = dense cross-entropy)")
  _validate_lora(m)
  if m.adapter_depth < 0:
    fail("model.adapter_depth", m.adapter_depth, "must be >= 0 (0 = a linear map)")
  if m.adapter_width <= 0:
    fail("model.adapter_width", m.adapter_width, "must be positive")
  if m.adapter_heads <= 0 or m.adapter_width % m.adapter_heads:
    fail("model.adapter_heads", m.adapter_heads, f"must be positive and divide config.model.adapter_width="
          f"{m.adapter_width}")
  if not 0.0 <= m.mask_ratio_min <= m.mask_ratio_max <= 1.0:
    fail("model.mask_ratio_min", m.mask_ratio_min, f"must satisfy 0 <= mask_ratio_min <= "
          f"config.model.mask_ratio_max={m.mask_ratio_max} <= 1")
  if m.mask_ratio_dist not in MASK_RATIO_DISTS:
    fail("model.mask_ratio_dist", m.mask_ratio_dist, f"must be one of {MASK_RATIO_DISTS}")
  if not 0.0 <= m.mask_ratio_loc <= 1.0:
    fail("model.mask_ratio_loc", m.mask_ratio_loc, "must be in [0, 1] (a masked share)")
  if not m.mask_ratio_std > 0:
    fail("model.mask_ratio_std", m.mask_ratio_std, "must be positive")
  for field in ("ce_weight", "diffusion_weight"):
    if not config.loss[field] >= 0:
      fail(f"loss.{field}", config.loss[field], "must be non-negative")
  _validate_train(config.train)
  for field in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
    if not isinstance(config.distributed[field], int) or config.distributed[field] < 1:
      fail(f"distributed.{field}", config.distributed[field], "must be a positive number of seconds")
  _validate_head(config.head)
  _validate_diffusion(config.diffusion)
  validate_tokenizer(config.tokenizer)
  from mmar_jax.train import mesh  # jax-free arithmetic beside make_mesh; imported late to keep no cycle.
  shape = mesh.mesh_shape(config, num_devices)
  if config.data.batch_size % config.train.grad_accum_steps:
    fail("data.batch_size", config.data.batch_size, f"must be a multiple of config.train.grad_accum_steps="
          f"{config.train.grad_accum_steps}")
  micro_batch = config.data.batch_size // config.train.grad_accum_steps
  if num_devices is not None and micro_batch % (shape[0] * shape[1]):
    fail("data.batch_size", config.data.batch_size, f"gives micro-batches of {micro_batch} rows, which the "
          f"{shape[0] * shape[1]} devices of the mesh's data x fsdp axes do not divide")
  rule_axes = {name for name, _ in config.mesh.logical_axis_rules}
  for name, target in config.mesh.logical_axis_rules:
    targets = (target,) if isinstance(target, str) or target is None else tuple(target)
    for t in targets:
      if t is not None and t not in MESH_AXES:
        fail("mesh.logical_axis_rules", (name, target), f"maps to unknown mesh axis {t!r}; axes are {MESH_AXES}")
  missing = set(LOGICAL_AXES) - rule_axes
  if missing:
    fail("mesh.logical_axis_rules", "...", f"has no rule for logical axes {sorted(missing)}")
  validate_data(config)


def validate_data(config: ml_collections.ConfigDict) -> None:
  """Checks config.data (the input pipeline's section) against config.tokenizer."""
  d = config.data
  if d.source not in DATA_SOURCES:
    fail("data.source", d.source, f"must be one of {DATA_SOURCES}")
  if d.source == "manifest" and not d.manifest:
    fail("data.manifest", d.manifest, "must name a JSONL manifest when config.data.source='manifest'")
  if d.source == "latents" and not d.latents_dir:
    fail("data.latents_dir", d.latents_dir, "must name a prepare-data --cache-latents output directory when "
         "config.data.source='latents'")
  if d.source == "latents" and config.tokenizer.kind != "kl16":
    fail("data.source", d.source, f"holds KL-16 moments; it needs config.tokenizer.kind='kl16', not "
         f"{config.tokenizer.kind!r}")
  if d.source == "mixture":
    from mmar_jax.data import mixture  # Imports this module's ConfigError: only here, not at the top.
    entries = mixture.parse(d.mixture)
    if any(e.kind == "latents" for e in entries) and config.tokenizer.kind != "kl16":
      fail("data.mixture", d.mixture, f"mixes latent caches of KL-16 moments; it needs config.tokenizer.kind="
           f"'kl16', not {config.tokenizer.kind!r}")
  if not 0.0 <= d.validation_fraction < 1.0:
    fail("data.validation_fraction", d.validation_fraction, "must be in [0, 1)")
  if d.source == "tfds" and not d.tfds_name:
    fail("data.tfds_name", d.tfds_name, "must name a prepared TFDS dataset when config.data.source='tfds'")
  if bool(d.tfds_question_key) != bool(d.tfds_answer_key):
    fail("data.tfds_answer_key", d.tfds_answer_key, f"and config.data.tfds_question_key="
          f"{d.tfds_question_key!r} must be set together")
  for field in ("seq_len", "batch_size", "synthetic_records",
                "packing_bins", "worker_buffer_size", "qa_turns"):
    if d[field] <= 0:
      fail(f"data.{field}", d[field], "must be positive")
  tokens = derived.num_image_tokens(config)
  # The shortest sequence is <|im_start|> <boi> image <eoi> (generation, caption dropped) or
  # <boi> image <eoi> answer <|im_end|>: image tokens + 3, plus one answer token.
  if d.seq_len < tokens + 4:
    fail("data.seq_len", d.seq_len, f"cannot hold one image of {tokens} tokens plus its 4 text tokens")
  for field in ("generation_fraction", "caption_dropout", "max_corrupt_fraction"):
    if not 0.0 <= d[field] <= 1.0:
      fail(f"data.{field}", d[field], "must be in [0, 1]")
  if not (d.synthetic_held_out_modulus == 0 or 2 <= d.synthetic_held_out_modulus <= 9):
    fail("data.synthetic_held_out_modulus", d.synthetic_held_out_modulus,
         "must be 0 (nothing held out) or in [2, 9] (the grid's 9 positions)")
  if d.num_workers < 0:
    fail("data.num_workers", d.num_workers, "must be >= 0 (0 decodes in the training process)")
  if not d.tokenizer:
    fail("data.tokenizer", d.tokenizer, "must be 'demo' or a directory holding tokenizer.json")
  validate_images(d)


def validate_images(d: ml_collections.ConfigDict) -> None:
  """Checks config.data's image fields (data/images.py): the training pipeline's and prepare-data's."""
  from PIL import ImageColor  # PIL's own colour parser decides what a colour is; only here, where it is needed.
  if d.image_resize not in IMAGE_RESIZES:
    fail("data.image_resize", d.image_resize, f"must be one of {IMAGE_RESIZES}")
  try:
    ImageColor.getrgb(d.image_background)
  except (ValueError, AttributeError, TypeError):
    fail("data.image_background", d.image_background, "must be a colour PIL knows: a name ('white') or '#rrggbb'")
  if not isinstance(d.min_image_size, int) or d.min_image_size < 1:
    fail("data.min_image_size", d.min_image_size, "must be a positive number of pixels")


def _validate_lora(m: ml_collections.ConfigDict) -> None:
  lora = m.lora
  if not isinstance(lora.rank, int) or not 0 <= lora.rank <= m.hidden_size:
    fail("model.lora.rank", lora.rank, f"must be an int in [0, config.model.hidden_size={m.hidden_size}] "
          "(0 = full fine-tuning)")
  if not lora.alpha > 0:
    fail("model.lora.alpha", lora.alpha, "must be positive (the update is scaled by alpha / rank)")
  targets = tuple(lora.targets)
  unknown = [t for t in targets if t not in LORA_TARGETS]
  if unknown or not targets or len(set(targets)) != len(targets):
    fail("model.lora.targets", targets, f"must be distinct names from {LORA_TARGETS}, at least one"
          + (f"; unknown: {unknown}" if unknown else ""))


def _validate_train(t: ml_collections.ConfigDict) -> None:
  for field in ("num_steps", "grad_accum_steps", "max_consecutive_skips", "log_every", "checkpoint_every",
                "keep_checkpoints", "eval_samples"):
    if t[field] <= 0:
      fail(f"train.{field}", t[field], "must be positive")
  for field in ("warmup_steps", "eval_every", "weight_decay", "grad_clip_norm", "time_limit_s", "adam_eps",
                "peak_flops_per_device"):
    if not t[field] >= 0:
      fail(f"train.{field}", t[field], "must be non-negative")
  if not t.learning_rate > 0:
    fail("train.learning_rate", t.learning_rate, "must be positive")
  if not 0 <= t.end_lr_fraction <= 1:
    fail("train.end_lr_fraction", t.end_lr_fraction, "must be in [0, 1]")
  for field in ("adam_b1", "adam_b2", "ema_decay"):
    if not 0 <= t[field] < 1:
      fail(f"train.{field}", t[field], "must be in [0, 1)")


def _validate_head(h: ml_collections.ConfigDict) -> None:
  for field in ("depth", "width", "frequency_dim"):
    if h[field] <= 0:
      fail(f"head.{field}", h[field], "must be positive")
  if h.frequency_dim % 2:
    fail("head.frequency_dim", h.frequency_dim, "must be even (cosine and sine halves)")
  if not h.norm_eps > 0:
    fail("head.norm_eps", h.norm_eps, "must be positive")
  for field in ("dtype", "param_dtype"):
    if h[field] not in DTYPES:
      fail(f"head.{field}", h[field], f"must be one of {DTYPES}")


def _validate_diffusion(d: ml_collections.ConfigDict) -> None:
  for field, allowed in (("schedule", NOISE_SCHEDULES), ("prediction", PREDICTIONS), ("sampler", SAMPLERS),
                         ("cfg_schedule", CFG_SCHEDULES)):
    if d[field] not in allowed:
      fail(f"diffusion.{field}", d[field], f"must be one of {allowed}")
  for field in ("num_train_steps", "num_sampling_steps", "diffusion_batch_mul", "num_generation_steps"):
    if d[field] <= 0:
      fail(f"diffusion.{field}", d[field], "must be positive")
  if d.num_sampling_steps > d.num_train_steps:
    fail("diffusion.num_sampling_steps", d.num_sampling_steps,
          f"must be at most config.diffusion.num_train_steps={d.num_train_steps}")
  if not d.temperature > 0:
    fail("diffusion.temperature", d.temperature, "must be positive")
  if not 0 < d.head_capacity <= 1:
    fail("diffusion.head_capacity", d.head_capacity, "must be in (0, 1]")
  if not 0 <= d.ddim_eta <= 1:
    fail("diffusion.ddim_eta", d.ddim_eta, "must be in [0, 1]")
  if not d.cfg_scale >= 0:
    fail("diffusion.cfg_scale", d.cfg_scale, "must be non-negative (1 = no guidance)")
def validate_tokenizer(t: ml_collections.ConfigDict) -> None:
  """Checks config.tokenizer: the kind, and that patches and latents tile the image exactly."""
  if t.kind not in TOKENIZER_KINDS:
    fail("tokenizer.kind", t.kind, f"must be one of {TOKENIZER_KINDS}")
  if t.dtype not in DTYPES:
    fail("tokenizer.dtype", t.dtype, f"must be one of {DTYPES}")
  if t.image_size <= 0:
    fail("tokenizer.image_size", t.image_size, "must be positive")
  if t.kind == "patch":
    if t.patch_size <= 0 or t.image_size % t.patch_size:
      fail("tokenizer.patch_size", t.patch_size, f"must be positive and divide config.tokenizer.image_size="
            f"{t.image_size}")
    if t.patch_scale <= 0 or math.frexp(t.patch_scale)[0] != 0.5:
      fail("tokenizer.patch_scale", t.patch_scale, "must be a positive power of 2 (so decode(encode(x)) == x "
            "exactly)")
    return
  levels = len(t.vae_channel_mult)
  if levels < 1 or min(t.vae_channel_mult) <= 0:
    fail("tokenizer.vae_channel_mult", t.vae_channel_mult, "must be a non-empty tuple of positive ints")
  for field in ("vae_channels", "vae_num_res_blocks", "vae_z_channels", "vae_norm_groups"):
    if t[field] <= 0:
      fail(f"tokenizer.{field}", t[field], "must be positive")
  for m in t.vae_channel_mult:
    if (t.vae_channels * m) % t.vae_norm_groups:
      fail("tokenizer.vae_norm_groups", t.vae_norm_groups, f"must divide every level's channel count "
            f"({t.vae_channels} x {tuple(t.vae_channel_mult)})")
  bad_levels = [lv for lv in t.vae_encoder_attn_levels if not 0 <= lv < levels]
  if bad_levels:
    fail("tokenizer.vae_encoder_attn_levels", t.vae_encoder_attn_levels, f"has levels outside 0..{levels - 1}")
  downsample = 2 ** (levels - 1)
  if t.image_size % downsample:
    fail("tokenizer.image_size", t.image_size, f"must be a multiple of the VAE's downsampling {downsample}")
  latent_size = t.image_size // downsample
  if t.latent_patch <= 0 or latent_size % t.latent_patch:
    fail("tokenizer.latent_patch", t.latent_patch, f"must be positive and divide the {latent_size}x"
          f"{latent_size} latent grid of config.tokenizer.image_size={t.image_size}")
  if t.scale_factor <= 0:
    fail("tokenizer.scale_factor", t.scale_factor, "must be positive")

