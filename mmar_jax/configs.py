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
DATA_SOURCES = ("synthetic", "manifest", "tfds")

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
)


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default. Presets override; nothing else defines defaults."""
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 0

  # The Qwen2 decoder. Defaults are Qwen2-0.5B's, the paper's MMAR-0.5B backbone.
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 151936
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

  # Device mesh: one axis size may be -1 ("the rest of the devices").
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES

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
  config.data.image_size = 256  # Images are resized to image_size x image_size RGB.
  # Pixels per image token side. The lead wires this to the image tokenizer's config; for now
  # tokens per image = (image_size // image_token_patch) ** 2 (256 for 256 px at 16, as MAR).
  config.data.image_token_patch = 16
  config.data.seq_len = 1024  # Tokens per row, text and image slots together.
  config.data.batch_size = 256  # Global rows per step, split evenly over hosts.
  config.data.generation_fraction = 0.5  # Share of records made generation sequences [ours].
  config.data.caption_dropout = 0.1  # Generation captions dropped for CFG, as MAR drops labels [ours].
  config.data.caption_loss = False  # Cross-entropy on generation captions too (answers always).
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
  mesh_shape(config, num_devices)
  rule_axes = {name for name, _ in config.mesh.logical_axis_rules}
  for name, target in config.mesh.logical_axis_rules:
    targets = (target,) if isinstance(target, str) or target is None else tuple(target)
    for t in targets:
      if t is not None and t not in MESH_AXES:
        _fail("mesh.logical_axis_rules", (name, target), f"maps to unknown mesh axis {t!r}; axes are {MESH_AXES}")
  missing = {"batch", "embed", "vocab", "mlp", "heads", "kv_heads"} - rule_axes
  if missing:
    _fail("mesh.logical_axis_rules", "...", f"has no rule for logical axes {sorted(missing)}")
  validate_data(config.data)


def validate_data(d: ml_collections.ConfigDict) -> None:
  """Checks config.data (the input pipeline's section)."""
  if d.source not in DATA_SOURCES:
    _fail("data.source", d.source, f"must be one of {DATA_SOURCES}")
  if d.source == "manifest" and not d.manifest:
    _fail("data.manifest", d.manifest, "must name a JSONL manifest when config.data.source='manifest'")
  if d.source == "tfds" and not d.tfds_name:
    _fail("data.tfds_name", d.tfds_name, "must name a prepared TFDS dataset when config.data.source='tfds'")
  if bool(d.tfds_question_key) != bool(d.tfds_answer_key):
    _fail("data.tfds_answer_key", d.tfds_answer_key, f"and config.data.tfds_question_key="
          f"{d.tfds_question_key!r} must be set together")
  for field in ("image_size", "image_token_patch", "seq_len", "batch_size", "synthetic_records",
                "packing_bins", "worker_buffer_size"):
    if d[field] <= 0:
      _fail(f"data.{field}", d[field], "must be positive")
  if d.image_size % d.image_token_patch:
    _fail("data.image_token_patch", d.image_token_patch, f"must divide config.data.image_size={d.image_size}")
  tokens = (d.image_size // d.image_token_patch) ** 2
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


def head_dim(model_config) -> int:
  """Per-head width: explicit `head_dim`, or hidden_size // num_heads as in Qwen2."""
  return model_config.head_dim or model_config.hidden_size // model_config.num_heads


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int | None) -> tuple[int, ...]:
  """The (data, fsdp, tensor) sizes with -1 resolved against `num_devices`."""
  sizes = [config.mesh[a] for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      _fail(f"mesh.{axis}", size, "must be a positive size or -1 (the rest of the devices)")
  if sizes.count(-1) > 1:
    _fail("mesh", dict(zip(MESH_AXES, sizes)), "may have at most one axis of size -1")
  if num_devices is None:
    return tuple(sizes)
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      _fail("mesh", dict(zip(MESH_AXES, sizes)), f"fixed axes ({known} devices) do not divide the "
            f"{num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  elif known != num_devices:
    _fail("mesh", dict(zip(MESH_AXES, sizes)), f"covers {known} devices but there are {num_devices}")
  return tuple(sizes)


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
