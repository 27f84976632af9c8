"""The unified MMAR model: one Qwen2 decoder over text and continuous image tokens, and its joint loss.

A batch row holds text ids and image slots (the pipeline's layout). Image tokens go through the
adapter and are written at their slots; tokens chosen for generation get the `<mask>` embedding
instead [MAR]. Attention is causal over text and bidirectional inside each image [paper]. The
backbone's final hidden state `z` at each masked image position conditions the diffusion head,
which is trained with the float32 v-loss on that position's clean token [MAR]. Understanding
images are clean and fully visible; text gets cross-entropy where `text_loss_mask` says [paper].
"""

from __future__ import annotations

import dataclasses
import typing
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from mmar_jax import configs
from mmar_jax.batch import Batch
from mmar_jax.diffusion.losses import diffusion_loss
from mmar_jax.diffusion.schedule import Schedule
from mmar_jax.models import chunked_ce, masks
from mmar_jax.models.adapter import AdapterConfig, ImageAdapter
from mmar_jax.models.backbone import Backbone, BackboneConfig, KVCache
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig


@dataclasses.dataclass(frozen=True)
class MMARConfig:
  """The unified model's view of the config: its parts' configs and the loss's settings."""

  backbone: BackboneConfig
  adapter: AdapterConfig
  head: HeadConfig
  mask_token_id: int
  schedule: str
  num_train_steps: int
  prediction: str
  diffusion_batch_mul: int
  ce_weight: float
  diffusion_weight: float
  num_image_tokens: int  # N, tokens per image (sizes the image position embedding).
  image_position_embedding: bool
  head_capacity: float  # Share of a row's image slots the head trains on (1: all, as MAR).
  ce_chunk_size: int  # Positions per block of the chunked cross-entropy; 0 = dense logits.

  @classmethod
  def from_config(cls, config, mask_token_id: int) -> MMARConfig:
    """`mask_token_id`: `text_tokenizer.special_ids(tokenizer).mask`, the id the pipeline puts in image slots."""
    d = config.diffusion
    return cls(backbone=BackboneConfig.from_config(config), adapter=AdapterConfig.from_config(config),
               head=HeadConfig.from_config(config), mask_token_id=mask_token_id, schedule=d.schedule,
               num_train_steps=d.num_train_steps, prediction=d.prediction,
               diffusion_batch_mul=d.diffusion_batch_mul, ce_weight=config.loss.ce_weight,
               diffusion_weight=config.loss.diffusion_weight, num_image_tokens=configs.num_image_tokens(config),
               image_position_embedding=config.model.image_position_embedding, head_capacity=d.head_capacity,
               ce_chunk_size=config.model.ce_chunk_size)


@flax.struct.dataclass
@typing.no_type_check  # flax rebuilds it through __init__ from ShapeDtypeStructs (eval_shape): unchecked.
class MMAROutput:
  logits: Float[Array, "b l v"] | None  # float32; None when config.model.ce_chunk_size > 0 (never built).
  hidden: Float[Array, "b l d"]  # The backbone's final (normed) hidden states.
  z: Float[Array, "b m n d"]  # hidden at each image token's slot: the head's condition there.
  loss: Float[Array, ""]  # ce_weight * ce + diffusion_weight * v_loss, float32.
  ce: Float[Array, ""]
  v_loss: Float[Array, ""]
  head_overflow: Float[Array, ""]  # Share of masked tokens left out of the v-loss by head_capacity.


def image_span_ids(image_slots: Int[ArrayLike, "b m n"], image_valid: Bool[ArrayLike, "b m"], length: int
                   ) -> Int[Array, "b l"]:
  """Per position: m + 1 where image m's tokens sit, 0 on text (the attention mask's span ids)."""
  batch, num_images, num_tokens = image_slots.shape
  span = jnp.broadcast_to(jnp.arange(1, num_images + 1, dtype=jnp.int32)[None, :, None], image_slots.shape)
  return _scatter(jnp.zeros((batch, length), jnp.int32), image_slots, image_valid, span)


def _scatter(target: Array, image_slots: Int[ArrayLike, "b m n"], image_valid: Bool[ArrayLike, "b m"], values: Array
             ) -> Array:
  """target[b, image_slots[b, m, n]] = values[b, m, n] for valid images, static shapes."""
  length = target.shape[1]
  # Invalid images' slots are 0 in the batch: send them out of range and drop them.
  slots = jnp.where(image_valid[:, :, None], image_slots, length)
  rows = jnp.arange(target.shape[0])[:, None, None]
  return target.at[rows, slots].set(values.astype(target.dtype), mode="drop")


@dataclasses.dataclass(frozen=True)
class MaskRatioConfig:
  """How much of each generation image is masked in training: config.model.mask_ratio_*."""
  min_ratio: float
  max_ratio: float
  dist: str  # One of configs.MASK_RATIO_DISTS.
  loc: float  # 'truncnorm' only: the Gaussian's mean before truncation.
  std: float  # 'truncnorm' only.

  @classmethod
  def from_config(cls, config) -> MaskRatioConfig:
    m = config.model
    return cls(min_ratio=m.mask_ratio_min, max_ratio=m.mask_ratio_max, dist=m.mask_ratio_dist,
               loc=m.mask_ratio_loc, std=m.mask_ratio_std)


def draw_mask_ratio(rng: PRNGKeyArray, shape: tuple[int, ...], cfg: MaskRatioConfig) -> Float[Array, "..."]:
  """Mask ratios in [min_ratio, max_ratio]: uniform, or N(loc, std^2) truncated to the range [MAR].

  MAR draws `scipy.stats.truncnorm((min - 1) / 0.25, 0, loc=1.0, scale=0.25)`: dist='truncnorm',
  loc 1.0, std 0.25, max_ratio 1. MAR draws one ratio per batch; here each image gets its own
  [ours: the same expectation, less step-to-step variance of the loss's token count].
  """
  low, high = cfg.min_ratio, cfg.max_ratio
  if cfg.dist == "uniform":
    return jax.random.uniform(rng, shape, jnp.float32, low, high)
  if cfg.dist == "truncnorm":
    if low == high:  # A point range: truncated_normal's bounds would coincide.
      return jnp.full(shape, low, jnp.float32)
    unit = jax.random.truncated_normal(rng, (low - cfg.loc) / cfg.std, (high - cfg.loc) / cfg.std, shape,
                                       jnp.float32)
    # Clip: loc + std * unit can round a hair outside the range in float32.
    return jnp.clip(cfg.loc + cfg.std * unit, low, high)
  raise ValueError(f"config.model.mask_ratio_dist={cfg.dist!r} must be one of {configs.MASK_RATIO_DISTS}")


def draw_generation_mask(rng: PRNGKeyArray, image_task: Int[ArrayLike, "b m"], num_tokens: int, cfg: MaskRatioConfig
                         ) -> Bool[Array, "b m n"]:
  """Which tokens of each generation image are masked (input `<mask>`, diffusion loss) this step.

  Per image a ratio from `draw_mask_ratio` in [min_ratio, max_ratio] (the paper's stage 1
  [0.7, 1], stage 2 [0, 1]); ceil(ratio * n) tokens, at least one, chosen in a random order
  [MAR]. Understanding images get none.
  """
  ratio_rng, order_rng = jax.random.split(rng)
  shape = image_task.shape + (num_tokens,)
  ratio = draw_mask_ratio(ratio_rng, image_task.shape, cfg)
  num_masked = jnp.clip(jnp.ceil(ratio * num_tokens), 1, num_tokens).astype(jnp.int32)
  # The rank of each token in a uniformly random order; the first num_masked ranks are masked.
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(order_rng, shape), axis=-1), axis=-1)
  return (rank < num_masked[..., None]) & (image_task == 1)[..., None]


def head_slots(num_slots: int, capacity: float) -> int:
  """Slots of a row the head trains on under `capacity` (config.diffusion.head_capacity)."""
  return max(1, min(num_slots, math.ceil(capacity * num_slots)))


def select_head_slots(generate_mask: Bool[ArrayLike, "b s"], capacity: int, rng: PRNGKeyArray) -> Int[Array, "b k"]:
  """Per row, the `capacity` image slots the head trains on: every masked slot while they fit,
  a uniformly random subset of them when more are masked, unmasked slots as filler [ours].

  MAR runs the head on every slot and lets the mask pick the loss terms; most slots of a packed
  row are unmasked (understanding images, visible tokens, empty image places), so a static
  capacity near the expected masked count does the same work with a fraction of the head's FLOPs.
  """
  priority = generate_mask.astype(jnp.float32) + 0.5 * jax.random.uniform(rng, generate_mask.shape)
  return jax.lax.top_k(priority, capacity)[1]


class MMAR(nn.Module):
  """Backbone + image adapter + diffusion head; `__call__` returns logits, z and the joint loss."""

  cfg: MMARConfig

  def setup(self):
    self.backbone = Backbone(self.cfg.backbone)
    self.adapter = ImageAdapter(self.cfg.adapter)
    self.head = DiffusionHead(self.cfg.head)
    if self.cfg.image_position_embedding:
      # A learned vector per image slot, on visible and masked tokens alike [MAR]; see the config.
      self.image_positions = self.param(
          "image_position_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
          (self.cfg.num_image_tokens, self.cfg.backbone.hidden_size), self.cfg.backbone.weight_dtype)

  def embed_inputs(self, input_ids: Int[ArrayLike, "b l"], image_tokens: Float[ArrayLike, "b m n c"],
                   image_slots: Int[ArrayLike, "b m n"], image_valid: Bool[ArrayLike, "b m"],
                   generate_mask: Bool[ArrayLike, "b m n"]) -> Float[Array, "b l d"]:
    """Text embeddings with each image's adapted tokens at its slots, `<mask>` where generated."""
    batch, num_images, num_tokens, channels = image_tokens.shape
    x = self.backbone.embed(input_ids)
    visible = ~generate_mask.reshape(batch * num_images, num_tokens)
    adapted = self.adapter(image_tokens.reshape(batch * num_images, num_tokens, channels), visible)
    adapted = adapted.reshape(batch, num_images, num_tokens, -1)
    # The learned mask embedding is the `<mask>` token's row of the table [ours: one place for it].
    mask_embedding = self.backbone.embed(jnp.full((1, 1), self.cfg.mask_token_id, jnp.int32))[0, 0]
    adapted = jnp.where(generate_mask[..., None], mask_embedding.astype(adapted.dtype), adapted)
    if self.cfg.image_position_embedding:
      adapted = adapted + self.image_positions.astype(adapted.dtype)
    return _scatter(x, image_slots, image_valid, adapted)

  def __call__(self, batch: Batch, image_tokens: Float[ArrayLike, "b m n c"],
               generate_mask: Bool[ArrayLike, "b m n"], rng: PRNGKeyArray) -> MMAROutput:
    """Forward pass and losses for a pipeline batch with its images already tokenized.

    Reads `batch`'s input_ids, targets, text_loss_mask, segment_ids, positions, image_slots and
    image_valid (the images are `image_tokens`). `generate_mask` comes from
    `draw_generation_mask`; `rng` draws the diffusion timesteps and noise.
    """
    cfg = self.cfg
    input_ids = batch.input_ids
    image_valid = batch.image_valid.astype(bool)
    image_slots = batch.image_slots
    generate_mask = generate_mask & image_valid[..., None]
    x = self.embed_inputs(input_ids, image_tokens, image_slots, image_valid, generate_mask)
    spans = image_span_ids(image_slots, image_valid, input_ids.shape[1])
    attention_mask = masks.mmar_attention_mask(batch.segment_ids, spans)
    chunked = cfg.ce_chunk_size > 0
    out = self.backbone(positions=batch.positions, inputs_embeds=x, segment_ids=batch.segment_ids,
                        attention_mask=attention_mask, compute_logits=not chunked)

    # Cross-entropy: log-softmax in float32, mean over its own tokens. Chunked, the LM head runs
    # a block of positions at a time and the [b, l, V] logits never exist (models/chunked_ce.py).
    text_weight = batch.text_loss_mask.astype(jnp.float32)
    if chunked:
      nll_sum = self.backbone.text_nll_sum(out.hidden, batch.targets, text_weight, cfg.ce_chunk_size)
    else:
      nll_sum = jnp.sum(chunked_ce.token_nll(out.logits, batch.targets) * text_weight)
    ce = nll_sum / jnp.maximum(jnp.sum(text_weight), 1.0)

    # v-loss: z at a masked slot predicts that slot's clean token [MAR]; mean over masked tokens.
    rows = jnp.arange(input_ids.shape[0])[:, None, None]
    z = out.hidden[rows, image_slots]
    x0, head_z, head_mask = image_tokens.astype(jnp.float32), z, generate_mask
    if cfg.head_capacity < 1.0:
      select_rng, rng = jax.random.split(rng)
      flat = lambda a: a.reshape((a.shape[0], -1) + a.shape[3:])  # noqa: E731  [b, m, n, ...] -> [b, m n, ...]
      idx = select_head_slots(flat(generate_mask), head_slots(flat(generate_mask).shape[1], cfg.head_capacity),
                              select_rng)
      pick = lambda a: jnp.take_along_axis(flat(a), idx.reshape(idx.shape + (1,) * (a.ndim - 3)), axis=1)  # noqa: E731
      x0, head_z, head_mask = pick(x0), pick(z), pick(generate_mask)
    schedule = Schedule.create(cfg.schedule, cfg.num_train_steps)
    v_loss = diffusion_loss(lambda x_t, t, c: self.head(x_t, t, c), x0, head_z, head_mask, rng,
                            schedule=schedule, prediction=cfg.prediction, batch_mul=cfg.diffusion_batch_mul)
    masked = jnp.sum(generate_mask.astype(jnp.float32))
    head_overflow = (masked - jnp.sum(head_mask.astype(jnp.float32))) / jnp.maximum(masked, 1.0)
    loss = cfg.ce_weight * ce + cfg.diffusion_weight * v_loss  # Eq. 4, with weights [ours].
    return MMAROutput(logits=out.logits, hidden=out.hidden, z=z, loss=loss, ce=ce, v_loss=v_loss,
                      head_overflow=head_overflow)

  # Inference building blocks [ours]. Prompts are left-padded (`mask` 0 on padding), so every row
  # of a batch ends at the same cache slot and the tokens that follow share one slot range;
  # positions restart at 0 on each row's first real token, as in training rows.

  def encode_prompt(self, prompt_ids: Int[ArrayLike, "b l"], prompt_mask: Int[ArrayLike, "b l"], *, reserve: int
                    ) -> tuple[KVCache, Int[Array, " b"]]:
    """Runs the backbone over left-padded text prompts (generation: `<|im_start|> caption <boi>`).

    Returns the KV cache of l + `reserve` slots (the prompt in the first l, `reserve` free for
    what follows, e.g. the image's N tokens) and each row's next position (its real length).
    """
    batch, length = prompt_ids.shape
    cache = KVCache.zeros(self.cfg.backbone, batch, length + reserve)
    out = self.backbone(prompt_ids, masks.left_padded_positions(prompt_mask), segment_ids=prompt_mask.astype(jnp.int32),
                        kv_cache=cache, compute_logits=False)
    return out.kv_cache, jnp.sum(prompt_mask, axis=-1).astype(jnp.int32)

  def generation_step(self, cache: KVCache, next_position: Int[ArrayLike, " b"],
                      image_tokens: Float[ArrayLike, "b n c"], known: Bool[ArrayLike, "b n"]) -> Float[Array, "b n d"]:
    """z at every slot of a partly generated image that follows the prompt in `cache`.

    Known tokens go through the adapter, the others get the `<mask>` embedding, as in training.
    The prompt's keys and values are reused from `cache` (from `encode_prompt`, with at least N
    slots reserved); the image span itself is run again at every AR step, since attention inside
    it is bidirectional [paper] and the set of known tokens changes, so its keys and values do
    too. The cache written here is dropped: the next step starts from the prompt's again.
    """
    batch, num_tokens, _ = image_tokens.shape
    slots = jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), (batch, 1, num_tokens))
    ids = jnp.full((batch, num_tokens), self.cfg.mask_token_id, jnp.int32)
    x = self.embed_inputs(ids, image_tokens[:, None], slots, jnp.ones((batch, 1), bool), ~known[:, None])
    positions = next_position[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)
    # Every image token sees every valid prompt slot and the whole image; the cache's validity
    # mask (padding, unused slots) is applied by the backbone.
    see_all = jnp.ones((batch, num_tokens, cache.valid.shape[1]), bool)
    out = self.backbone(positions=positions, inputs_embeds=x, attention_mask=see_all, kv_cache=cache,
                        compute_logits=False)
    return out.hidden

  def head_prediction(self, x_t: Float[ArrayLike, "b c"], t: Float[ArrayLike, " b"], z: Float[ArrayLike, "b d"]
                      ) -> Float[Array, "b c"]:
    """The diffusion head's prediction (v, eps or x0 per the config) for the samplers."""
    return self.head(x_t, t, z)

  def understanding_prefill(self, input_ids: Int[ArrayLike, "b l"], input_mask: Int[ArrayLike, "b l"],
                            image_tokens: Float[ArrayLike, "b n c"], image_slots: Int[ArrayLike, "b n"], *, reserve: int
                            ) -> tuple[Float[Array, "b v"], KVCache, Int[Array, " b"]]:
    """Runs `[pad] <boi> [image] <eoi> question` with clean, fully visible image tokens at `image_slots`.

    Returns the float32 logits at the last position (the first answer token's), the KV cache of
    l + `reserve` slots for decoding, and each row's next position.
    """
    batch, length = input_ids.shape
    valid = jnp.ones((batch, 1), bool)
    x = self.embed_inputs(input_ids, image_tokens[:, None], image_slots[:, None], valid,
                          jnp.zeros((batch, 1, image_tokens.shape[1]), bool))
    segment_ids = input_mask.astype(jnp.int32)
    attention = masks.mmar_attention_mask(segment_ids, image_span_ids(image_slots[:, None], valid, length))
    # The cache's reserved slots are empty: no query of the prompt sees them.
    attention = jnp.pad(attention, ((0, 0), (0, 0), (0, reserve)))
    cache = KVCache.zeros(self.cfg.backbone, batch, length + reserve)
    out = self.backbone(positions=masks.left_padded_positions(input_mask), inputs_embeds=x, segment_ids=segment_ids,
                        attention_mask=attention, kv_cache=cache, compute_logits=False)
    logits = self.backbone.logits(out.hidden[:, -1:])[:, 0]  # The LM head on the last position only.
    return logits, out.kv_cache, jnp.sum(input_mask, axis=-1).astype(jnp.int32)

  def decode_step(self, token: Int[ArrayLike, " b"], position: Int[ArrayLike, " b"], cache: KVCache
                  ) -> tuple[Float[Array, "b v"], KVCache]:
    """One text token per row appended to `cache`; float32 logits for the next one."""
    out = self.backbone(token[:, None], position[:, None], kv_cache=cache)
    return out.logits[:, 0], out.kv_cache


def as_variables(params) -> dict:
  """`{'params': params}` unless `params` already is a flax variables dict."""
  return params if "params" in params else {"params": params}
