"""Prints KL-16 VAE encode/decode images/s at 256x256: ours (jax, float32 and bfloat16) vs diffusers (torch).

Same architecture and the same random weights on both sides (MAR's KL-16: encoder attention at
the 16x16 level, via diffusers' AttnDownEncoderBlock2D). Encode is pixels -> posterior moments,
decode is latents -> pixels. Times exclude compilation (one warm-up call each).

  python benchmarks/vae_throughput.py [--batch 1 --iters 2] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For benchmarks.report.
from benchmarks import report  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.convert import vae_ckpt  # noqa: E402
from mmar_jax.models import kl_vae, tokenizers  # noqa: E402


def _time(fn, iters):
  fn()  # Warm-up (compiles on the jax side).
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters


def _diffusers_kl16(params, cfg: kl_vae.VAEConfig):
  """diffusers' AutoencoderKL shaped like KL-16, holding our params (Flax layout -> torch layout)."""
  from diffusers import AutoencoderKL
  from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
  levels = len(cfg.channel_mult)
  config = dict(in_channels=3, out_channels=3, latent_channels=cfg.z_channels, layers_per_block=cfg.num_res_blocks,
                norm_num_groups=cfg.norm_groups, block_out_channels=tuple(cfg.channels * m for m in cfg.channel_mult),
                down_block_types=tuple("AttnDownEncoderBlock2D" if i in cfg.encoder_attn_levels else
                                       "DownEncoderBlock2D" for i in range(levels)),
                up_block_types=("UpDecoderBlock2D",) * levels)
  sd = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.asarray(leaf)
    sd[vae_ckpt.torch_key(tuple(p.key for p in path))] = torch.from_numpy(
        np.array(a.transpose(3, 2, 0, 1) if a.ndim == 4 else a))
  converted = {k: v for k, v in convert_ldm_vae_checkpoint(sd, config).items() if ".down." not in k}
  for i in cfg.encoder_attn_levels:
    for j in range(cfg.num_res_blocks):
      for o, n in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        for leaf in ("weight", "bias"):
          t = sd[f"encoder.down.{i}.attn.{j}.{o}.{leaf}"]
          converted[f"encoder.down_blocks.{i}.attentions.{j}.{n}.{leaf}"] = t.reshape(t.shape[:2]) if t.ndim == 4 else t
  model = AutoencoderKL(**config).eval()
  model.load_state_dict(converted, strict=True)
  return model


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--iters", type=int, default=2)
  parser.add_argument("--size", type=int, default=256)
  report.add_json_flag(parser)
  args = parser.parse_args()
  b, size = args.batch, args.size
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), torch threads {torch.get_num_threads()}, "
        f"batch {b}, {size}x{size}, {args.iters} iters")

  base = tokenizers.TokenizerConfig.from_config(configs.with_values({"tokenizer.kind": "kl16", "tokenizer.image_size": size}))
  params = tokenizers.KLVAE(base).init_params(jax.random.key(0))
  x = np.random.default_rng(0).uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
  z = np.random.default_rng(1).normal(size=(b, size // 16, size // 16, 16)).astype(np.float32)
  rows = {}
  for dtype in ("float32", "bfloat16"):
    module = kl_vae.AutoencoderKL(dataclasses.replace(base.vae, dtype=dtype))
    enc = jax.jit(lambda p, x: module.apply({"params": p}, x, method=kl_vae.AutoencoderKL.encode))
    dec = jax.jit(lambda p, z: module.apply({"params": p}, z, method=kl_vae.AutoencoderKL.decode))
    rows[f"jax {dtype}"] = (_time(lambda: enc(params, x).block_until_ready(), args.iters),
                            _time(lambda: dec(params, z).block_until_ready(), args.iters))

  model = _diffusers_kl16(params, base.vae)
  x_t, z_t = torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(z).permute(0, 3, 1, 2)
  with torch.inference_mode():
    rows["diffusers float32"] = (_time(lambda: model.quant_conv(model.encoder(x_t)), args.iters),
                                 _time(lambda: model.decode(z_t), args.iters))

  ref_enc, ref_dec = rows["diffusers float32"]
  print(f"{'':20s} {'encode img/s':>12s} {'decode img/s':>12s} {'enc vs torch':>12s} {'dec vs torch':>12s}")
  for name, (te, td) in rows.items():
    print(f"{name:20s} {b / te:12.3f} {b / td:12.3f} {ref_enc / te:11.2f}x {ref_dec / td:11.2f}x")
  report.emit(args, "vae_throughput", {
      "backend": jax.default_backend(), "batch": b, "size": size,
      "rows": [{"name": name, "encode_images_per_s": b / te, "decode_images_per_s": b / td,
                "encode_vs_torch": ref_enc / te, "decode_vs_torch": ref_dec / td} for name, (te, td) in rows.items()]})


if __name__ == "__main__":
  main()
