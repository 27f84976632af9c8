"""Our jitted backbone forward against transformers' Qwen2 forward, same ~20M-parameter model.

    python benchmarks/backbone_cpu.py [--batch 4] [--seq_len 256] [--iters 10] [--json]

Both run float32 on this machine's CPU with the same weights (ours imported from the HF model
through convert/hf_qwen2.py) and the same token ids; it prints the median time of each and
their ratio, and checks the logits agree so the comparison is of the same computation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For benchmarks.report.
from benchmarks import report  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.convert import hf_qwen2  # noqa: E402
from mmar_jax.models.backbone import Backbone  # noqa: E402

F32 = configs.with_values({"model.dtype": "float32"})  # Against torch in float32.


def median_seconds(fn, iters: int) -> float:
  fn()  # Warm-up (and compilation for jax).
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--iters", type=int, default=10)
  report.add_json_flag(parser)
  args = parser.parse_args()
  torch.manual_seed(0)
  hf_config = transformers.Qwen2Config(
      vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
      num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=args.seq_len)
  torch_model = transformers.Qwen2ForCausalLM(hf_config).eval()
  with tempfile.TemporaryDirectory() as tmp:
    torch_model.save_pretrained(tmp)
    cfg, params = hf_qwen2.load(tmp, config=F32)
  variables = {"params": jax.tree.map(jnp.asarray, params)}
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq_len))

  forward = jax.jit(lambda v, x: Backbone(cfg).apply(v, x).logits)
  ids_jax = jnp.asarray(ids)
  ids_torch = torch.tensor(ids)

  def run_torch():
    with torch.no_grad():
      return torch_model(input_ids=ids_torch).logits

  difference = float(np.abs(np.asarray(forward(variables, ids_jax)) - run_torch().numpy()).max())
  ours = median_seconds(lambda: forward(variables, ids_jax).block_until_ready(), args.iters)
  theirs = median_seconds(run_torch, args.iters)
  tokens = args.batch * args.seq_len
  print(f"Qwen2 {sum(p.numel() for p in torch_model.parameters()) / 1e6:.1f}M params, batch {args.batch} x "
        f"{args.seq_len} tokens, float32, {os.cpu_count()} CPU cores (torch threads {torch.get_num_threads()})")
  print(f"  mmar_jax (jax {jax.__version__}, jit):      {ours * 1e3:8.1f} ms  {tokens / ours:10,.0f} tokens/s")
  print(f"  transformers {transformers.__version__} (torch {torch.__version__}): {theirs * 1e3:8.1f} ms  "
        f"{tokens / theirs:10,.0f} tokens/s")
  print(f"  speed ratio (torch time / jax time): {theirs / ours:.2f}x; max |logit difference| {difference:.2e}")
  report.emit(args, "backbone_cpu", {"batch": args.batch, "seq_len": args.seq_len, "jax_s": ours, "torch_s": theirs,
                                     "jax_tokens_per_s": tokens / ours, "torch_tokens_per_s": tokens / theirs,
                                     "torch_over_jax": theirs / ours, "max_logit_difference": difference})


if __name__ == "__main__":
  main()
