"""Demo: a tiny model that trains on the synthetic shapes dataset on 2 CPU cores."""

from mmar_jax import configs


def get_config():
  config = configs.base_config()
  config.name = "demo"
  config.model.vocab_size = 512
  config.model.hidden_size = 128
  config.model.intermediate_size = 384
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.rope_theta = 10_000.0
  config.model.max_seq_len = 512
  config.model.dtype = "float32"  # CPUs gain nothing from bfloat16 matmuls.
  config.model.adapter_depth = 1
  config.model.adapter_width = 128
  config.model.adapter_heads = 4
  config.head.depth = 2
  config.head.width = 128
  config.head.dtype = "float32"  # As the backbone: CPUs gain nothing from bfloat16.
  config.diffusion.num_sampling_steps = 50
  config.diffusion.num_generation_steps = 8  # 16 tokens: 2 a step on average (MAR: 4 of 256) [ours].
  # Lossless pixel patches: the demo needs no pretrained VAE. 32x32 images, 8x8 patches -> 16 tokens of 192.
  config.tokenizer.kind = "patch"
  config.tokenizer.image_size = 32
  config.tokenizer.patch_size = 8
  config.tokenizer.dtype = "float32"
  config.data.source = "synthetic"
  config.data.synthetic_records = 10_000
  config.data.seq_len = 128
  config.data.batch_size = 16
  config.data.packing = True
  config.data.num_workers = 1
  config.data.tokenizer = "demo"
  return config
