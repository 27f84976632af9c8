"""What MMAR's attention mask costs in memory on the XLA path: compiled temp bytes per formulation.

    python benchmarks/attention_mask_memory.py [--seq_len 4096] [--batch 1,2] [--layers 2] [--heads 4]
        [--remat none|dots_with_no_batch_dims]

Compiles (never runs) the backbone's forward and forward+backward (grads of params and inputs)
over `inputs_embeds` at a long sequence and a small width, and reads
`compiled.memory_analysis().temp_size_in_bytes` for each way of handing the MMAR pattern to
`jax.nn.dot_product_attention`:
  dense    [b, 1, l, l] bool built once from the [b, l] segment and image-span ids, broadcast
           over heads inside attention: what models/mmar.py does
  inside   the same pattern rebuilt inside every attention call from [b, l] vectors
           (key rank <= query rank, same segment, real key), so no [b, l, l] array is an input
  heads    a per-head [b, h, l, l] bool (what broadcasting avoids)
  bias     a [b, 1, l, l] float32 additive bias built once (what the cuDNN path makes of a
           bool mask, there in the compute dtype)
  bias_inside  the bool mask turned into that bias inside every attention call
  causal   is_causal=True and no mask: the lower bound asked for (wrong for images and packing)
  none     no mask at all: the floor (wrong)
The variants other than `dense` swap `jax.nn.dot_product_attention` for a wrapper in this script
only; the model code is untouched. XLA:CPU's buffer assignment, so the absolute figures are the
CPU's; the differences between rows are what the mask costs.
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For benchmarks.report.

from benchmarks import report  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.models import masks  # noqa: E402
from mmar_jax.models.backbone import Backbone, BackboneConfig  # noqa: E402

MODES = ("dense", "inside", "heads", "bias", "bias_inside", "causal", "none")
_ATTENTION = jax.nn.dot_product_attention


@flax.struct.dataclass
class RankMask:
  """The MMAR pattern as [b, l] vectors: k may be seen from q iff key_rank[k] <= query_rank[q],
  same segment, real key. Text: both ranks are the position; an image span [s, e): key rank s,
  query rank e - 1, so the whole span sees itself and text after it sees it (causal)."""

  query_rank: jax.Array
  key_rank: jax.Array
  segment_ids: jax.Array

  def __getitem__(self, index):  # The backbone passes mask[:, None]; the vectors stay [b, l].
    return self

  def dense(self) -> jax.Array:
    length = self.segment_ids.shape[-1]
    seg = self.segment_ids
    visible = ((self.key_rank[:, None, :] <= self.query_rank[:, :, None]) & (seg[:, :, None] == seg[:, None, :])
               & (seg != 0)[:, None, :])
    return visible | jnp.eye(length, dtype=bool)


def rank_mask(segment_ids, image_span_ids) -> RankMask:
  """RankMask of the same pattern as masks.mmar_attention_mask(segment_ids, image_span_ids)."""
  length = segment_ids.shape[-1]
  pos = jnp.broadcast_to(jnp.arange(length), segment_ids.shape)
  in_image = image_span_ids > 0
  # Per position the first and last index of its image span (span ids are unique per row), O(l).
  per_span = lambda reduce: jax.vmap(  # noqa: E731
      lambda s, p: jnp.take(reduce(p, s, num_segments=length + 1), s))(image_span_ids, pos)
  first = jnp.where(in_image, per_span(jax.ops.segment_min), pos)
  last = jnp.where(in_image, per_span(jax.ops.segment_max), pos)
  return RankMask(query_rank=last, key_rank=first, segment_ids=segment_ids)


def patched_attention(mode: str, num_heads: int):
  def attention(q, k, v, mask=None, implementation=None, **kwargs):
    if mode == "causal":
      return _ATTENTION(q, k, v, is_causal=True, implementation=implementation)
    if mode == "inside":
      return _ATTENTION(q, k, v, mask=mask.dense()[:, None], implementation=implementation)
    if mode == "heads":
      mask = jnp.broadcast_to(mask, (mask.shape[0], num_heads) + mask.shape[2:])
      return _ATTENTION(q, k, v, mask=jnp.asarray(mask), implementation=implementation)
    if mode == "none":
      return _ATTENTION(q, k, v, implementation=implementation)
    if mode in ("bias", "bias_inside"):
      bias = mask if mode == "bias" else jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min / 2)
      return _ATTENTION(q, k, v, bias=bias, implementation=implementation)
    return _ATTENTION(q, k, v, mask=mask, implementation=implementation, **kwargs)
  return attention


def temp_bytes(cfg: BackboneConfig, mode: str, batch: int, length: int, train: bool) -> int:
  model = Backbone(cfg)
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32)))
  embeds = jax.ShapeDtypeStruct((batch, length, cfg.hidden_size), jnp.float32)
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)

  def forward(p, x, segment_ids, spans):
    if mode == "inside":
      mask = rank_mask(segment_ids, spans)
    elif mode == "bias":
      mask = jnp.where(masks.mmar_attention_mask(segment_ids, spans), 0.0, jnp.finfo(jnp.float32).min / 2)
    elif mode in ("causal", "none"):
      mask = None  # The backbone's default causal mask is built and dropped unused (dead code).
    else:
      mask = masks.mmar_attention_mask(segment_ids, spans)
    out = model.apply(p, inputs_embeds=x, segment_ids=segment_ids, attention_mask=mask, compute_logits=False)
    return jnp.sum(out.hidden)

  fn = jax.grad(forward, argnums=(0, 1)) if train else forward
  jax.nn.dot_product_attention = patched_attention(mode, cfg.num_heads)
  try:
    compiled = jax.jit(fn).lower(params, embeds, ids, ids).compile()
  finally:
    jax.nn.dot_product_attention = _ATTENTION
  return compiled.memory_analysis().temp_size_in_bytes


def check_rank_mask_matches():
  """The `inside` formulation is the same pattern as masks.mmar_attention_mask (packing, padding)."""
  segments = jnp.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
  spans = jnp.array([[0, 1, 1, 1, 0, 0, 0, 2, 2, 0, 0, 0]])
  np.testing.assert_array_equal(rank_mask(segments, spans).dense(), masks.mmar_attention_mask(segments, spans))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_len", type=int, default=4096)
  parser.add_argument("--batch", default="1,2")
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--remat", default="none", help="the backbone's remat_policy (mmar_7b: dots_with_no_batch_dims)")
  report.add_json_flag(parser)
  args = parser.parse_args()
  check_rank_mask_matches()
  cfg = BackboneConfig.from_config(configs.with_values({
      "model.vocab_size": 256, "model.hidden_size": 64, "model.intermediate_size": 128, "model.num_layers": args.layers,
      "model.num_heads": args.heads, "model.num_kv_heads": 2, "model.head_dim": 16, "model.rope_theta": 1e4,
      "model.max_seq_len": args.seq_len, "model.dtype": "float32", "model.scan_layers": True,
      "model.remat_policy": args.remat}))
  length = args.seq_len
  print(f"backend {jax.default_backend()}; backbone {cfg.num_layers} layers (nn.scan), width {cfg.hidden_size}, "
        f"heads {cfg.num_heads}/{cfg.num_kv_heads}, float32, remat {cfg.remat_policy}, seq_len {length}; temp MiB of "
        "the compiled program")
  print(f"{'batch':>5} {'mode':<11} {'forward':>10} {'fwd+bwd':>10} {'fwd - causal':>13} {'fwd+bwd - causal':>17}"
        f"  [b,l,l] bool = {length * length / 2**20:.0f} MiB per row; one layer's f32 logits = "
        f"{4 * cfg.num_heads * length * length / 2**20:.0f} MiB per row")
  figures = []
  for batch in (int(b) for b in args.batch.split(",")):
    rows = {mode: [temp_bytes(cfg, mode, batch, length, train) / 2**20 for train in (False, True)]
            for mode in MODES}
    for mode in MODES:
      fwd, train = rows[mode]
      print(f"{batch:>5} {mode:<11} {fwd:>10.1f} {train:>10.1f} {fwd - rows['causal'][0]:>13.1f} "
            f"{train - rows['causal'][1]:>17.1f}")
      figures.append(dict(batch=batch, mode=mode, forward_temp_mib=fwd, train_temp_mib=train))
  report.emit(args, "attention_mask_memory", dict(backend=jax.default_backend(), seq_len=length, rows=figures))


if __name__ == "__main__":
  main()
