"""MMAR-7B: the Qwen2-7B backbone of the paper."""

from mmar_jax import configs


def get_config():
  config = configs.base_config()
  config.name = "mmar_7b"
  config.model.vocab_size = 152064
  config.model.hidden_size = 3584
  config.model.intermediate_size = 18944
  config.model.num_layers = 28
  config.model.num_heads = 28
  config.model.num_kv_heads = 4
  config.model.rope_theta = 1_000_000.0
  config.model.rms_norm_eps = 1e-6
  config.model.tie_word_embeddings = False
  config.model.max_seq_len = 32768
  config.model.remat_policy = "dots_with_no_batch_dims"  # 7B activations do not fit without remat.
  config.mesh.data = 1
  config.mesh.fsdp = -1  # ZeRO-3 over every device by default.
  config.head.depth = 12  # MAR-H's head: the paper does not give MMAR's head size.
  config.head.width = 1536
  # The "image expert" reading of the paper (shared/MMAR.md): LLM frozen, LoRA on every linear map.
  # Rank 128, alpha 256 is LLaVA-1.5's LoRA recipe for adapting an LLM to image tokens; the paper
  # publishes no rank [ours]. config.model.lora.rank=0 is full fine-tuning.
  # The cross-entropy 256 positions at a time: at V ~ 152k the dense float32 logits and their
  # gradient take 1.2 GiB a 1024-token row (loss temps 2.9 -> 0.8 GiB, benchmarks/RESULTS.md).
  config.model.ce_chunk_size = 256
  config.model.lora.rank = 128
  config.model.lora.alpha = 256.0
  # The Qwen2 model directory the README has users download; override with --config.data.tokenizer=DIR.
  config.data.tokenizer = "Qwen2-7B"
  return config
