"""The config schema (every field and its default), loading with CLI overrides, and validation.

Presets in `configs/<name>.py` start from `base_config()` and override what differs, so a
field has exactly one default. `load_config` follows the ml_collections convention
(`--config=configs/demo.py --config.model.num_layers=4`) and validates before any compute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field and the value."""


DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
MESH_AXES = ("data", "fsdp", "tensor")
NOISE_SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("v", "eps", "x0")
SAMPLERS = ("ddpm", "ddim")
CFG_SCHEDULES = ("linear", "constant")
MASK_RATIO_DISTS = ("uniform", "truncnorm")
TOKENIZER_KINDS = ("patch", "kl16")
DATA_SOURCES = ("synthetic", "manifest", "tfds")
# The backbone projections LoRA can adapt (mmar_jax/models/lora.py: TARGETS).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")

# Logical axis -> mesh axis (or axes). One table decides every sharding: parameters and
# activations name logical axes only. flax skips a mesh axis that an earlier dimension of the
# same array already uses, so activations ('batch', 'length', 'embed') shard batch over
# data x fsdp and leave embed whole, while parameters ('vocab', 'embed') shard embed over fsdp.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("lora", None),  # LoRA's rank axis: small, replicated.
)


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default. Presets override; nothing else defines defaults."""
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 0

  # The Qwen2 decoder. Defaults are Qwen2-0.5B's, the paper's MMAR-0.5B backbone.
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 151936
  # Rows of the Hugging Face checkpoint the table was imported from (import-hf records it; 0 = not
  # imported). Rows past it are MMAR's own; export-hf writes only the first hf_vocab_size rows.
  config.model.hf_vocab_size = 0
  config.model.hidden_size = 896
  config.model.intermediate_size = 4864
  config.model.num_layers = 24
  config.model.num_heads = 14
  config.model.num_kv_heads = 2
  config.model.head_dim = 0  # 0: hidden_size // num_heads, as in Qwen2.
  config.model.rope_theta = 1_000_000.0
  config.model.rms_norm_eps = 1e-6
  config.model.tie_word_embeddings = True
  config.model.max_seq_len = 32768  # Longest sequence the model is used with (HF max_position_embeddings).
  config.model.init_std = 0.02
  config.model.dtype = "bfloat16"  # Compute dtype of matmuls; parameters stay in param_dtype.
  config.model.param_dtype = "float32"
  config.model.scan_layers = True  # nn.scan over layers: compile time independent of depth.
  config.model.remat_policy = "none"  # One of REMAT_POLICIES.
  config.model.attention_impl = "auto"  # jax.nn.dot_product_attention's: auto = cuDNN on GPU in 16 bits, else XLA.
  # LoRA on the backbone's projections (mmar_jax/models/lora.py). rank 0 = full fine-tuning;
  # rank > 0 freezes the base weights and trains the factors, the adapter, the head and the
  # embedding rows (the "image expert" reading of the paper, shared/MMAR.md) [ours, inferred].
  config.model.lora = ml_collections.ConfigDict()
  config.model.lora.rank = 0
  config.model.lora.alpha = 256.0  # The update is scaled by alpha / rank [LoRA].
  # Every linear map of the decoder: the LLM must learn a new modality, not a new style, and LoRA
  # on all linear layers is what matches full fine-tuning (QLoRA, Dettmers et al. 2023) and is
  # LLaVA-1.5's LoRA recipe; ('q', 'v') is the original LoRA paper's cheaper choice [ours].
  config.model.lora.targets = LORA_TARGETS
  # The image input adapter (the paper's EmbeddingViT + VisProjector; sizes unpublished [ours]):
  # a bidirectional transformer over one image's tokens, then an MLP to hidden_size.
  config.model.adapter_depth = 2  # Transformer blocks; 0 = a linear map from the token width.
  config.model.adapter_width = 1024
  config.model.adapter_heads = 16
  # A learned embedding per image slot added to the image tokens' inputs (visible and <mask>
  # alike), as MAR's decoder has. The paper adds none beyond RoPE [paper], and a pretrained LLM
  # tells slots apart through RoPE; a small model trained from scratch barely does: every masked
  # slot then gets nearly the same z and the head draws the same token everywhere [ours].
  config.model.image_position_embedding = False
  config.model.adapter_remat = False  # nn.remat each adapter block: recompute its activations in the backward pass.
  # MAR-style masked generation: the share of an image's tokens masked, drawn per image in
  # [mask_ratio_min, mask_ratio_max]. Stage 1 of the paper draws from [0.7, 1.0] (the default);
  # stage 2 from [0, 1.0]: set --config.model.mask_ratio_min=0 for it [paper].
  config.model.mask_ratio_min = 0.7
  config.model.mask_ratio_max = 1.0
  # One of MASK_RATIO_DISTS. 'uniform' over the range (the paper states only the range);
  # 'truncnorm' is MAR's N(loc, std^2) truncated to the range (MAR: loc 1.0, std 0.25, so most
  # draws mask nearly everything) [MAR]. The default is uniform [ours].
  config.model.mask_ratio_dist = "uniform"
  config.model.mask_ratio_loc = 1.0  # 'truncnorm' only: the Gaussian's mean before truncation [MAR].
  config.model.mask_ratio_std = 0.25  # 'truncnorm' only: its standard deviation [MAR].

  # The joint loss ce_weight * CE + diffusion_weight * v_loss, each term normalised by its own
  # token count. The paper's Eq. 4 is the unweighted sum, hence 1 and 1; the weights are not
  # published, and the paper notes the task balance needs tuning [ours].
  config.loss = ml_collections.ConfigDict()
  config.loss.ce_weight = 1.0
  config.loss.diffusion_weight = 1.0

  # Optimisation and the training loop (mmar_jax/train). AdamW (0.9, 0.95), weight decay 0.02 and
  # lr 1e-4 x batch / 256 are MAR's [MAR]; the paper publishes no schedule [ours: warmup + cosine].
  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 100_000  # Optimizer steps (one global batch each, accumulation included).
  config.train.learning_rate = 1e-4  # Peak; MAR scales it by batch / 256, set it for your batch.
  config.train.warmup_steps = 1000  # Linear warmup from 0 to the peak.
  config.train.end_lr_fraction = 0.1  # Cosine decay to this fraction of the peak at num_steps.
  config.train.adam_b1 = 0.9
  config.train.adam_b2 = 0.95
  config.train.adam_eps = 1e-8
  config.train.weight_decay = 0.02  # Decoupled (AdamW); not on norm scales, biases or 1-d parameters.
  config.train.grad_clip_norm = 1.0  # Clip by global norm; 0 = off.
  config.train.grad_accum_steps = 1  # Micro-batches per step (lax.scan); data.batch_size is the global total.
  # A non-finite loss or gradient skips the update (optax.apply_if_finite); this many in a row
  # stops the run with the last good checkpoint kept.
  config.train.max_consecutive_skips = 10
  config.train.log_every = 50  # Steps between metric writes (console, TensorBoard).
  config.train.checkpoint_every = 1000  # Steps between (asynchronous) Orbax checkpoints.
  config.train.keep_checkpoints = 3  # The last K are kept.
  config.train.eval_every = 5000  # Steps between evaluation hooks (sampled images, answers); 0 = off.
  config.train.eval_samples = 8  # Held-out records the hook generates / answers.
  config.train.peak_flops_per_device = 0.0  # For MFU; 0 = the device's data-sheet figure (train/metrics.py).
  config.train.time_limit_s = 0.0  # Stop (with a checkpoint) after this much training time; 0 = none.

  # The MAR diffusion head: an MLP of AdaLN residual blocks modelling p(x | z) per image token.
  # Sizes are MAR's (depth/width 6/1024 B, 8/1280 L, 12/1536 H); the default is MAR-B's.
  config.head = ml_collections.ConfigDict()
  config.head.depth = 6
  config.head.width = 1024
  config.head.frequency_dim = 256  # Sinusoidal timestep features, as in DiT/MAR.
  config.head.norm_eps = 1e-6
  config.head.dtype = "bfloat16"  # Compute dtype; the loss, the schedule and the sampler stay float32.
  config.head.param_dtype = "float32"
  config.head.remat = False  # nn.remat each residual block: recompute its activations in the backward pass.

  # The diffusion process around the head (MAR's, with the paper's v-prediction).
  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "cosine"  # One of NOISE_SCHEDULES.
  config.diffusion.num_train_steps = 1000
  config.diffusion.num_sampling_steps = 100  # Respaced from num_train_steps, evenly, ends included.
  config.diffusion.prediction = "v"  # One of PREDICTIONS; the paper's ablation compares v and eps.
  config.diffusion.diffusion_batch_mul = 4  # (t, noise) draws per token, folded into one head batch.
  # Share of a row's image slots (max images x N) the head trains on: the masked ones, a random
  # subset of them if more are masked. 1 runs it on every slot, as MAR does; a packed row's
  # masked slots are a fraction of them, so less does the same work (train/metrics logs
  # head_overflow, the share of masked tokens that did not fit) [ours].
  config.diffusion.head_capacity = 1.0
  config.diffusion.sampler = "ddpm"  # One of SAMPLERS; MAR samples with DDPM.
  config.diffusion.temperature = 1.0  # Scales the DDPM noise std (MAR's temperature).
  config.diffusion.ddim_eta = 0.0  # 0: deterministic DDIM.
  config.diffusion.cfg_scale = 3.0  # Classifier-free guidance; MAR reports ~3 with the linear schedule.
  config.diffusion.cfg_schedule = "linear"  # One of CFG_SCHEDULES: MAR ramps 1 -> cfg_scale over AR steps.
  # AR steps of image generation: each reveals a share of the tokens in a random order, on MAR's
  # cosine schedule. MAR uses 64 for 256 tokens (256 for its best FID); capped at the image's
  # token count, since MAR's rule reveals at least one token a step.
  config.diffusion.num_generation_steps = 64

  # Image tokenizer: pixels (NHWC, [-1, 1]) <-> continuous tokens [B, N, D]. Defaults are MAR's KL-16.
  config.tokenizer = ml_collections.ConfigDict()
  config.tokenizer.kind = "kl16"  # One of TOKENIZER_KINDS: 'patch' (lossless pixel patches) or 'kl16'.
  config.tokenizer.image_size = 256
  config.tokenizer.patch_size = 4  # 'patch' only: a token is a patch_size x patch_size x 3 pixel patch.
  config.tokenizer.patch_scale = 1.0  # 'patch' only: tokens = patches * patch_scale (a power of 2, so exact).
  config.tokenizer.latent_patch = 1  # 'kl16' only: p x p latent positions form one token; 1 = MAR.
  config.tokenizer.vae_checkpoint = ""  # 'kl16': convert-vae output dir, MAR torch file or safetensors.
  config.tokenizer.dtype = "bfloat16"  # Compute dtype of the VAE convolutions; posterior stays float32.
  config.tokenizer.scale_factor = 0.2325  # MAR's KL-16 latent scale: tokens = latents * scale_factor.
  # The VAE architecture (LDM AutoencoderKL as MAR's KL-16 builds it).
  config.tokenizer.vae_channels = 128
  config.tokenizer.vae_channel_mult = (1, 1, 2, 2, 4)
  config.tokenizer.vae_num_res_blocks = 2
  config.tokenizer.vae_z_channels = 16
  config.tokenizer.vae_norm_groups = 32
  # Encoder levels (0 = full resolution) whose res blocks are each followed by self-attention.
  # MAR's attn_resolutions=(16,) at resolution 256 is level 4, the 16x16 one.
  config.tokenizer.vae_encoder_attn_levels = (4,)

  # Device mesh: one axis size may be -1 ("the rest of the devices"). data, fsdp and tensor are
  # the sizes within one slice (TPU) or host (GPU), over the fast interconnect (ICI / NVLink).
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  # Slices or hosts that the data and fsdp axes also span over the data-centre network (DCN), as
  # MaxText's dcn_*_parallelism: mesh axis 'data' is dcn_data x data devices long. Their product
  # must equal the number of slices (or of processes where devices have no slices, e.g. GPUs).
  # Tensor parallelism never crosses the DCN: it communicates every layer.
  config.mesh.dcn_data = 1
  config.mesh.dcn_fsdp = 1
  config.mesh.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES

  # Multi-process jobs (train/distributed.py, launch/): jax.distributed's waits, in seconds.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialization_timeout_s = 300  # For every process to join at start.
  # A process silent this long counts as lost and the others stop (exit 75, naming it): the bound
  # on how long a job runs on with a dead process. jax's default; heartbeats come from a thread,
  # so long compiles or checkpoint writes do not delay them.
  config.distributed.heartbeat_timeout_s = 100
  config.distributed.shutdown_timeout_s = 300  # At exit, for the others to finish too.

  # The input pipeline (mmar_jax/data): source, task sequences, batching, workers.
  config.data = ml_collections.ConfigDict()
  config.data.source = "synthetic"  # One of DATA_SOURCES.
  config.data.manifest = ""  # JSONL manifest for source='manifest'; image paths relative to it.
  # source='tfds': a dataset the user prepared in array_record format; nothing downloads.
  config.data.tfds_name = ""
  config.data.tfds_split = "train"
  config.data.tfds_data_dir = ""  # '' = tfds's default directory.
  config.data.tfds_image_key = "image"  # Feature with pixels or encoded image bytes.
  config.data.tfds_caption_key = "caption"  # '' when the dataset has no captions.
  config.data.tfds_question_key = ""  # Set both to read question / answer pairs.
  config.data.tfds_answer_key = ""
  config.data.synthetic_records = 100_000  # Size of the synthetic shapes dataset (one epoch).
  config.data.synthetic_noisy_backgrounds = True  # Pixel noise on half the backgrounds (False: all plain).
  config.data.seq_len = 1024  # Tokens per row, text and image slots together.
  config.data.batch_size = 256  # Global rows per step, split evenly over hosts.
  config.data.generation_fraction = 0.5  # Share of records made generation sequences [ours].
  config.data.caption_dropout = 0.1  # Generation captions dropped for CFG, as MAR drops labels [ours].
  config.data.caption_loss = False  # Cross-entropy on generation captions too (answers always).
  # Question / answer pairs an understanding sequence asks about its image, one turn after
  # another (LLaVA's multi-turn conversations); fewer when the record has fewer or they do not fit.
  config.data.qa_turns = 1
  config.data.packing = False  # Pack several sequences per row (segment ids, restarted positions).
  config.data.packing_bins = 8  # First-fit packing: rows filled at once.
  config.data.num_workers = 8  # Grain worker processes decoding records; 0 decodes in-process.
  config.data.worker_buffer_size = 4  # Records buffered per worker.
  config.data.seed = 0  # Shuffling (a new order every epoch), task choice and caption dropout.
  config.data.max_corrupt_fraction = 0.01  # Stop when more than this share of records is corrupt.
  config.data.tokenizer = "demo"  # 'demo' (built from the synthetic grammar) or a dir/tokenizer.json.
  return config


def load_config(path: str, overrides: Sequence[str] = (), *, num_devices: int | None = None):
  """Loads `path`'s get_config() with `overrides` like 'model.num_layers=4', then validates.

  Parsing goes through ml_collections' own config flag, so the command line and this function
  accept exactly the same syntax.
  """
  argv = ["mmar-jax", f"--config={path}"] + [f"--config.{o.removeprefix('--config.')}" for o in overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    raise ConfigError(f"bad config override in {argv[1:]}: {e}") from e
  config = flag_values.config
  validate(config, num_devices=num_devices)
  return config


def _fail(field: str, value, why: str):
  raise ConfigError(f"config.{field}={value!r} {why}")


def validate(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
  """Checks the fields that would otherwise fail deep inside a jitted function.

  `num_devices`, when given, checks that the mesh shape covers exactly that many devices.
  """
  m = config.model
  for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
    if m[field] <= 0:
      _fail(f"model.{field}", m[field], "must be positive")
  if m.head_dim == 0 and m.hidden_size % m.num_heads:
    _fail("model.num_heads", m.num_heads, f"must divide config.model.hidden_size={m.hidden_size} "
          "(or set config.model.head_dim)")
  if m.num_heads % m.num_kv_heads:
    _fail("model.num_kv_heads", m.num_kv_heads, f"must divide config.model.num_heads={m.num_heads}")
  if head_dim(m) % 2:
    _fail("model.head_dim", head_dim(m), "must be even (rotary embeddings rotate pairs)")
  for field, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES), ("remat_policy", REMAT_POLICIES),
                         ("attention_impl", ATTENTION_IMPLS)):
    if m[field] not in allowed:
      _fail(f"model.{field}", m[field], f"must be one of {allowed}")
  if not 0 <= m.hf_vocab_size <= m.vocab_size:
    _fail("model.hf_vocab_size", m.hf_vocab_size, f"must be in [0, config.model.vocab_size={m.vocab_size}] "
          "(0 = not imported from Hugging Face)")
  _validate_lora(m)
  if m.adapter_depth < 0:
    _fail("model.adapter_depth", m.adapter_depth, "must be >= 0 (0 = a linear map)")
  if m.adapter_width <= 0:
    _fail("model.adapter_width", m.adapter_width, "must be positive")
  if m.adapter_heads <= 0 or m.adapter_width % m.adapter_heads:
    _fail("model.adapter_heads", m.adapter_heads, f"must be positive and divide config.model.adapter_width="
          f"{m.adapter_width}")
  if not 0.0 <= m.mask_ratio_min <= m.mask_ratio_max <= 1.0:
    _fail("model.mask_ratio_min", m.mask_ratio_min, f"must satisfy 0 <= mask_ratio_min <= "
          f"config.model.mask_ratio_max={m.mask_ratio_max} <= 1")
  if m.mask_ratio_dist not in MASK_RATIO_DISTS:
    _fail("model.mask_ratio_dist", m.mask_ratio_dist, f"must be one of {MASK_RATIO_DISTS}")
  if not 0.0 <= m.mask_ratio_loc <= 1.0:
    _fail("model.mask_ratio_loc", m.mask_ratio_loc, "must be in [0, 1] (a masked share)")
  if not m.mask_ratio_std > 0:
    _fail("model.mask_ratio_std", m.mask_ratio_std, "must be positive")
  for field in ("ce_weight", "diffusion_weight"):
    if not config.loss[field] >= 0:
      _fail(f"loss.{field}", config.loss[field], "must be non-negative")
  _validate_train(config.train)
  for field in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
    if not isinstance(config.distributed[field], int) or config.distributed[field] < 1:
      _fail(f"distributed.{field}", config.distributed[field], "must be a positive number of seconds")
  _validate_head(config.head)
  _validate_diffusion(config.diffusion)
  validate_tokenizer(config.tokenizer)
  shape = mesh_shape(config, num_devices)
  if config.data.batch_size % config.train.grad_accum_steps:
    _fail("data.batch_size", config.data.batch_size, f"must be a multiple of config.train.grad_accum_steps="
          f"{config.train.grad_accum_steps}")
  micro_batch = config.data.batch_size // config.train.grad_accum_steps
  if num_devices is not None and micro_batch % (shape[0] * shape[1]):
    _fail("data.batch_size", config.data.batch_size, f"gives micro-batches of {micro_batch} rows, which the "
          f"{shape[0] * shape[1]} devices of the mesh's data x fsdp axes do not divide")
  rule_axes = {name for name, _ in config.mesh.logical_axis_rules}
  for name, target in config.mesh.logical_axis_rules:
    targets = (target,) if isinstance(target, str) or target is None else tuple(target)
    for t in targets:
      if t is not None and t not in MESH_AXES:
        _fail("mesh.logical_axis_rules", (name, target), f"maps to unknown mesh axis {t!r}; axes are {MESH_AXES}")
  missing = {"batch", "embed", "vocab", "mlp", "heads", "kv_heads"} - rule_axes
  if missing:
    _fail("mesh.logical_axis_rules", "...", f"has no rule for logical axes {sorted(missing)}")
  validate_data(config)


def validate_data(config: ml_collections.ConfigDict) -> None:
  """Checks config.data (the input pipeline's section) against config.tokenizer."""
  d = config.data
  if d.source not in DATA_SOURCES:
    _fail("data.source", d.source, f"must be one of {DATA_SOURCES}")
  if d.source == "manifest" and not d.manifest:
    _fail("data.manifest", d.manifest, "must name a JSONL manifest when config.data.source='manifest'")
  if d.source == "tfds" and not d.tfds_name:
    _fail("data.tfds_name", d.tfds_name, "must name a prepared TFDS dataset when config.data.source='tfds'")
  if bool(d.tfds_question_key) != bool(d.tfds_answer_key):
    _fail("data.tfds_answer_key", d.tfds_answer_key, f"and config.data.tfds_question_key="
          f"{d.tfds_question_key!r} must be set together")
  for field in ("seq_len", "batch_size", "synthetic_records",
                "packing_bins", "worker_buffer_size", "qa_turns"):
    if d[field] <= 0:
      _fail(f"data.{field}", d[field], "must be positive")
  # Images are resized to config.tokenizer.image_size; the tokenizer alone says how many tokens
  # an image becomes. Imported here: tokenizers import jax, configs must stay importable alone.
  from mmar_jax.models.tokenizers import num_image_tokens
  tokens = num_image_tokens(config)
  # The shortest sequence is <|im_start|> <boi> image <eoi> (generation, caption dropped) or
  # <boi> image <eoi> answer <|im_end|>: image tokens + 3, plus one answer token.
  if d.seq_len < tokens + 4:
    _fail("data.seq_len", d.seq_len, f"cannot hold one image of {tokens} tokens plus its 4 text tokens")
  for field in ("generation_fraction", "caption_dropout", "max_corrupt_fraction"):
    if not 0.0 <= d[field] <= 1.0:
      _fail(f"data.{field}", d[field], "must be in [0, 1]")
  if d.num_workers < 0:
    _fail("data.num_workers", d.num_workers, "must be >= 0 (0 decodes in the training process)")
  if not d.tokenizer:
    _fail("data.tokenizer", d.tokenizer, "must be 'demo' or a directory holding tokenizer.json")


def _validate_lora(m: ml_collections.ConfigDict) -> None:
  lora = m.lora
  if not isinstance(lora.rank, int) or not 0 <= lora.rank <= m.hidden_size:
    _fail("model.lora.rank", lora.rank, f"must be an int in [0, config.model.hidden_size={m.hidden_size}] "
          "(0 = full fine-tuning)")
  if not lora.alpha > 0:
    _fail("model.lora.alpha", lora.alpha, "must be positive (the update is scaled by alpha / rank)")
  targets = tuple(lora.targets)
  unknown = [t for t in targets if t not in LORA_TARGETS]
  if unknown or not targets or len(set(targets)) != len(targets):
    _fail("model.lora.targets", targets, f"must be distinct names from {LORA_TARGETS}, at least one"
          + (f"; unknown: {unknown}" if unknown else ""))


def _validate_train(t: ml_collections.ConfigDict) -> None:
  for field in ("num_steps", "grad_accum_steps", "max_consecutive_skips", "log_every", "checkpoint_every",
                "keep_checkpoints", "eval_samples"):
    if t[field] <= 0:
      _fail(f"train.{field}", t[field], "must be positive")
  for field in ("warmup_steps", "eval_every", "weight_decay", "grad_clip_norm", "time_limit_s", "adam_eps",
                "peak_flops_per_device"):
    if not t[field] >= 0:
      _fail(f"train.{field}", t[field], "must be non-negative")
  if not t.learning_rate > 0:
    _fail("train.learning_rate", t.learning_rate, "must be positive")
  if not 0 <= t.end_lr_fraction <= 1:
    _fail("train.end_lr_fraction", t.end_lr_fraction, "must be in [0, 1]")
  for field in ("adam_b1", "adam_b2"):
    if not 0 <= t[field] < 1:
      _fail(f"train.{field}", t[field], "must be in [0, 1)")


def _validate_head(h: ml_collections.ConfigDict) -> None:
  for field in ("depth", "width", "frequency_dim"):
    if h[field] <= 0:
      _fail(f"head.{field}", h[field], "must be positive")
  if h.frequency_dim % 2:
    _fail("head.frequency_dim", h.frequency_dim, "must be even (cosine and sine halves)")
  if not h.norm_eps > 0:
    _fail("head.norm_eps", h.norm_eps, "must be positive")
  for field in ("dtype", "param_dtype"):
    if h[field] not in DTYPES:
      _fail(f"head.{field}", h[field], f"must be one of {DTYPES}")


def _validate_diffusion(d: ml_collections.ConfigDict) -> None:
  for field, allowed in (("schedule", NOISE_SCHEDULES), ("prediction", PREDICTIONS), ("sampler", SAMPLERS),
                         ("cfg_schedule", CFG_SCHEDULES)):
    if d[field] not in allowed:
      _fail(f"diffusion.{field}", d[field], f"must be one of {allowed}")
  for field in ("num_train_steps", "num_sampling_steps", "diffusion_batch_mul", "num_generation_steps"):
    if d[field] <= 0:
      _fail(f"diffusion.{field}", d[field], "must be positive")
  if d.num_sampling_steps > d.num_train_steps:
    _fail("diffusion.num_sampling_steps", d.num_sampling_steps,
          f"must be at most config.diffusion.num_train_steps={d.num_train_steps}")
  if not d.temperature > 0:
    _fail("diffusion.temperature", d.temperature, "must be positive")
  if not 0 < d.head_capacity <= 1:
    _fail("diffusion.head_capacity", d.head_capacity, "must be in (0, 1]")
  if not 0 <= d.ddim_eta <= 1:
    _fail("diffusion.ddim_eta", d.ddim_eta, "must be in [0, 1]")
  if not d.cfg_scale >= 0:
    _fail("diffusion.cfg_scale", d.cfg_scale, "must be non-negative (1 = no guidance)")
def validate_tokenizer(t: ml_collections.ConfigDict) -> None:
  """Checks config.tokenizer: the kind, and that patches and latents tile the image exactly."""
  if t.kind not in TOKENIZER_KINDS:
    _fail("tokenizer.kind", t.kind, f"must be one of {TOKENIZER_KINDS}")
  if t.dtype not in DTYPES:
    _fail("tokenizer.dtype", t.dtype, f"must be one of {DTYPES}")
  if t.image_size <= 0:
    _fail("tokenizer.image_size", t.image_size, "must be positive")
  if t.kind == "patch":
    if t.patch_size <= 0 or t.image_size % t.patch_size:
      _fail("tokenizer.patch_size", t.patch_size, f"must be positive and divide config.tokenizer.image_size="
            f"{t.image_size}")
    if t.patch_scale <= 0 or math.frexp(t.patch_scale)[0] != 0.5:
      _fail("tokenizer.patch_scale", t.patch_scale, "must be a positive power of 2 (so decode(encode(x)) == x "
            "exactly)")
    return
  levels = len(t.vae_channel_mult)
  if levels < 1 or min(t.vae_channel_mult) <= 0:
    _fail("tokenizer.vae_channel_mult", t.vae_channel_mult, "must be a non-empty tuple of positive ints")
  for field in ("vae_channels", "vae_num_res_blocks", "vae_z_channels", "vae_norm_groups"):
    if t[field] <= 0:
      _fail(f"tokenizer.{field}", t[field], "must be positive")
  for m in t.vae_channel_mult:
    if (t.vae_channels * m) % t.vae_norm_groups:
      _fail("tokenizer.vae_norm_groups", t.vae_norm_groups, f"must divide every level's channel count "
            f"({t.vae_channels} x {tuple(t.vae_channel_mult)})")
  bad_levels = [lv for lv in t.vae_encoder_attn_levels if not 0 <= lv < levels]
  if bad_levels:
    _fail("tokenizer.vae_encoder_attn_levels", t.vae_encoder_attn_levels, f"has levels outside 0..{levels - 1}")
  downsample = 2 ** (levels - 1)
  if t.image_size % downsample:
    _fail("tokenizer.image_size", t.image_size, f"must be a multiple of the VAE's downsampling {downsample}")
  latent_size = t.image_size // downsample
  if t.latent_patch <= 0 or latent_size % t.latent_patch:
    _fail("tokenizer.latent_patch", t.latent_patch, f"must be positive and divide the {latent_size}x"
          f"{latent_size} latent grid of config.tokenizer.image_size={t.image_size}")
  if t.scale_factor <= 0:
    _fail("tokenizer.scale_factor", t.scale_factor, "must be positive")


def head_dim(model_config) -> int:
  """Per-head width: explicit `head_dim`, or hidden_size // num_heads as in Qwen2."""
  return model_config.head_dim or model_config.hidden_size // model_config.num_heads


DCN_AXES = ("dcn_data", "dcn_fsdp")  # config.mesh fields: the DCN extent of 'data' and 'fsdp'.


def dcn_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The DCN extent of each mesh axis, (dcn_data, dcn_fsdp, 1): slices or hosts per axis."""
  for field in DCN_AXES:
    if not isinstance(config.mesh[field], int) or config.mesh[field] < 1:
      _fail(f"mesh.{field}", config.mesh[field], "must be a positive number of slices or hosts")
  return (config.mesh.dcn_data, config.mesh.dcn_fsdp, 1)


def ici_shape(config: ml_collections.ConfigDict, num_devices: int | None) -> tuple[int, ...]:
  """The (data, fsdp, tensor) sizes within one slice or host, -1 resolved against its share of
  `num_devices` (all devices / the DCN product)."""
  sizes = [config.mesh[a] for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      _fail(f"mesh.{axis}", size, "must be a positive size or -1 (the rest of the devices)")
  if sizes.count(-1) > 1:
    _fail("mesh", dict(zip(MESH_AXES, sizes)), "may have at most one axis of size -1")
  granules = math.prod(dcn_shape(config))
  if num_devices is None:
    return tuple(sizes)
  if num_devices % granules:
    _fail("mesh", {f: config.mesh[f] for f in DCN_AXES}, f"spans {granules} slices or hosts, which do not "
          f"divide the {num_devices} devices")
  per_granule = num_devices // granules
  where = f" of each of the {granules} slices or hosts" if granules > 1 else ""
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if per_granule % known:
      _fail("mesh", dict(zip(MESH_AXES, sizes)), f"fixed axes ({known} devices) do not divide the "
            f"{per_granule} devices{where}")
    sizes[sizes.index(-1)] = per_granule // known
  elif known != per_granule:
    _fail("mesh", dict(zip(MESH_AXES, sizes)), f"covers {known} devices but there are {per_granule}{where}")
  return tuple(sizes)


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int | None) -> tuple[int, ...]:
  """The whole mesh's (data, fsdp, tensor) sizes: the per-slice sizes times their DCN extent,
  -1 resolved against `num_devices` (left as -1 when that is None)."""
  ici = ici_shape(config, num_devices)
  return tuple(i if i == -1 else i * d for i, d in zip(ici, dcn_shape(config)))


def from_dict(snapshot: dict) -> ml_collections.ConfigDict:
  """Rebuilds a config from a JSON snapshot through the schema: unknown fields fail by name,
  lists become tuples where the schema has tuples, and the result is validated."""
  config = base_config()

  def assign(node: ml_collections.ConfigDict, values: dict, prefix: str):
    for key, value in values.items():
      if key not in node:
        raise ConfigError(f"config.{prefix}{key} in the snapshot is not a field of this version's schema")
      if isinstance(node[key], ml_collections.ConfigDict):
        assign(node[key], value, f"{prefix}{key}.")
      elif isinstance(node[key], tuple):
        node[key] = _as_tuples(value)
      else:
        node[key] = value

  assign(config, snapshot, "")
  validate(config)
  return config


def _as_tuples(value):
  return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
