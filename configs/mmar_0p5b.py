"""MMAR-0.5B: the Qwen2-0.5B backbone of the paper.

The base schema's model defaults are Qwen2-0.5B's (hidden 896, 24 layers, 14/2 heads, MLP 4864,
vocab 151936, tied embeddings, rope theta 1e6) and its head defaults are MAR-B's (depth 6,
width 1024; the paper does not give MMAR's head size), so this preset only names the run and
where its tokenizer lives; the test of the presets pins those dimensions.
"""

from mmar_jax import configs


def get_config():
  config = configs.base_config()
  config.name = "mmar_0p5b"
  # The "image expert" reading of the paper (shared/MMAR.md): LLM frozen, LoRA on every linear map.
  # Rank 128, alpha 256 is LLaVA-1.5's LoRA recipe for adapting an LLM to image tokens; the paper
  # publishes no rank [ours]. config.model.lora.rank=0 is full fine-tuning.
  # The cross-entropy 256 positions at a time: at V ~ 152k the dense float32 logits and their
  # gradient take 1.2 GiB a 1024-token row (loss temps 2.9 -> 0.8 GiB, benchmarks/RESULTS.md).
  config.model.ce_chunk_size = 256
  config.model.lora.rank = 128
  config.model.lora.alpha = 256.0
  # The Qwen2 model directory the README has users download; override with --config.data.tokenizer=DIR.
  config.data.tokenizer = "Qwen2-0.5B"
  return config
