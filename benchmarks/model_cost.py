"""Parameters and training FLOPs of the unified model by part, for each preset, beside MAR's figures.

    python benchmarks/model_cost.py [--presets demo,mmar_0p5b,mmar_7b]

Parameter counts come from `jax.eval_shape(MMAR.init)` (abstract shapes: mmar_7b needs no memory).
FLOPs per training sample use mmar_jax/train/flops.py (PaLM's convention: 2 x matmul parameters
per token, full l x l attention; training = 3 x forward less the weight gradients of frozen
kernels, `FlopsPerToken.training`, the count benchmarks/flops.py checks against XLA's). A sample is one row of
`config.data.seq_len` tokens holding one image of N tokens (the unpacked layout of the real
presets); the adapter runs on the image's N tokens, the head on all N tokens x
`diffusion_batch_mul` (as MAR's, masked or not), the backbone on the whole row. The frozen image
tokenizer (cached latents) is not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmar_jax import configs
from mmar_jax.batch import Batch
from mmar_jax.models.backbone import count_params
from mmar_jax.models.diffusion_head import DiffusionHead
from mmar_jax.models.mmar import MMAR, MMARConfig
from mmar_jax.train import flops

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For benchmarks.report.
from benchmarks import report  # noqa: E402

# MAR's released models (github.com/LTH14/mar README and models/mar.py): total parameters,
# DiffLoss head depth/width, decoder width (the head's z) [MAR].
MAR_MODELS = {"MAR-B": (208e6, 6, 1024, 768), "MAR-L": (479e6, 8, 1280, 1024), "MAR-H": (943e6, 12, 1536, 1280)}
MAR_TOKEN_CHANNELS = 16  # KL-16 latents, one position a token.


def mar_head_params(depth: int, width: int, z_dim: int, channels: int = MAR_TOKEN_CHANNELS, out_mul: int = 2,
                    frequency_dim: int = 256) -> int:
  """MAR's SimpleMLPAdaLN parameters; out_mul=2 for its learned variance (ours predicts v only: 1)."""
  w, c = width, channels
  time = frequency_dim * w + w + w * w + w
  cond_and_input = z_dim * w + w + c * w + w
  block = 2 * w + 2 * (w * w + w) + 3 * w * w + 3 * w  # LayerNorm, MLP, AdaLN modulation.
  final = w * out_mul * c + out_mul * c + 2 * w * w + 2 * w  # No-affine LayerNorm, linear, modulation.
  return time + cond_and_input + depth * block + final


def split_params(params) -> dict[str, int]:
  """Counts by part: LoRA leaves (any path naming 'lora') apart from the backbone they sit in."""
  counts = {"adapter": 0, "backbone": 0, "embeddings": 0, "lora": 0, "head": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [str(getattr(k, "key", k)) for k in path]
    if any("lora" in n.lower() for n in names):
      part = "lora"
    elif names[0] == "backbone":
      part = "embeddings" if names[1] in ("embed_tokens", "lm_head") else "backbone"
    elif names[0] == "image_position_embedding":  # MMAR's own table (config.model.image_position_embedding).
      part = "embeddings"
    else:
      part = names[0]
    counts[part] += leaf.size
  return counts


def abstract_params(config, num_tokens: int):
  cfg = MMARConfig.from_config(config, mask_token_id=config.model.vocab_size - 1)
  length = config.data.seq_len
  zeros = Batch.zeros(1, length, 1, num_tokens)
  batch = dataclasses.replace(jax.tree.map(jnp.asarray, zeros), segment_ids=jnp.ones((1, length), jnp.int32),
                              image_valid=jnp.ones((1, 1), bool))
  tokens = jnp.zeros((1, 1, num_tokens, configs.image_token_dim(config)))
  mask = jnp.zeros((1, 1, num_tokens), bool)
  init = lambda: MMAR(cfg).init(jax.random.key(0), batch, tokens, mask, jax.random.key(1))  # noqa: E731
  return cfg, nn.meta.unbox(jax.eval_shape(init))["params"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="demo,mmar_0p5b,mmar_7b")
  report.add_json_flag(parser)
  args = parser.parse_args()

  print("Parameters by part (millions)")
  print(f"{'preset':<10} {'adapter':>9} {'backbone':>10} {'embeddings':>11} {'LoRA':>7} {'head':>8} {'total':>10}"
        f"  head config")
  rows = []
  for name in args.presets.split(","):
    config = configs.load_config(f"configs/{name}.py")
    n = configs.num_image_tokens(config)
    cfg, params = abstract_params(config, n)
    counts = split_params(params)
    print(f"{name:<10} {counts['adapter'] / 1e6:>9.2f} {counts['backbone'] / 1e6:>10.2f} "
          f"{counts['embeddings'] / 1e6:>11.2f} {counts['lora'] / 1e6:>7.2f} {counts['head'] / 1e6:>8.2f} "
          f"{sum(counts.values()) / 1e6:>10.2f}  depth {cfg.head.depth} x width {cfg.head.width}, "
          f"z {config.model.hidden_size}")
    rows.append((name, config, cfg, n, counts))

  print("\nMAR's heads for comparison [MAR]: head parameters (millions) with MAR's z width and learned variance")
  for model, (total, depth, width, z_dim) in MAR_MODELS.items():
    head = mar_head_params(depth, width, z_dim)
    print(f"  {model}: head depth {depth} x width {width}, z {z_dim}: {head / 1e6:.2f} M of {total / 1e6:.0f} M total "
          f"({head / total:.1%})")

  print("\nTraining GFLOPs per sample (one row of seq_len tokens with one image of N tokens; 3 x forward less "
        "frozen kernels' weight gradients)")
  print(f"{'preset':<10} {'seq_len':>7} {'N':>4} {'adapter':>10} {'backbone':>11} {'attention':>10} {'LM head':>9} "
        f"{'head':>9} {'total':>10} {'head share':>11}")
  figures = []
  for name, config, cfg, n, counts in rows:
    length = config.data.seq_len
    per_token = flops.backbone_flops_per_token(cfg.backbone, length)
    lm_head = 2 * flops.lm_head_params(cfg.backbone) * length
    # The LM head trains (its rows are the special tokens' too); only the layers' kernels freeze.
    backbone = (3 * per_token.matmul - per_token.frozen_matmul) * length - 3 * lm_head
    attention = 3 * per_token.attention * length
    adapter = flops.adapter_flops_per_token(cfg.adapter, n).training * n
    head = flops.head_flops_per_token(cfg.head, config.model.hidden_size, cfg.diffusion_batch_mul).training * n
    parts = [x / 1e9 for x in (adapter, backbone, attention, 3 * lm_head, head)]
    total = sum(parts)
    figures.append({"preset": name, "params": counts, "seq_len": length, "image_tokens": n,
                    "training_gflops_per_sample": dict(zip(("adapter", "backbone", "attention", "lm_head", "head"),
                                                           parts)) | {"total": total}})
    print(f"{name:<10} {length:>7} {n:>4} " + " ".join(f"{x:>{w}.3f}" for x, w in zip(parts, (10, 11, 10, 9, 9)))
          + f" {total:>10.3f} {parts[-1] / total:>11.1%}")
    # Self-check: our head is MAR's SimpleMLPAdaLN with one output per channel.
    ours = count_params(nn.meta.unbox(jax.eval_shape(
        DiffusionHead(cfg.head).init, jax.random.key(0), jnp.zeros((1, cfg.head.token_channels)), jnp.zeros((1,)),
        jnp.zeros((1, config.model.hidden_size))))["params"])
    expected = mar_head_params(cfg.head.depth, cfg.head.width, config.model.hidden_size, cfg.head.token_channels,
                               out_mul=1, frequency_dim=cfg.head.frequency_dim)
    assert ours == counts["head"] == expected, (ours, counts["head"], expected)
  report.emit(args, "model_cost", {"presets": figures})


if __name__ == "__main__":
  main()
