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
  config.data.source = "synthetic"
  config.data.synthetic_records = 10_000
  config.data.image_size = 32
  config.data.image_token_patch = 8  # 4 x 4 = 16 image tokens.
  config.data.seq_len = 128
  config.data.batch_size = 16
  config.data.packing = True
  config.data.num_workers = 1
  config.data.tokenizer = "demo"
  return config
