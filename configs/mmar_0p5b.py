"""MMAR-0.5B: the Qwen2-0.5B backbone of the paper."""

from mmar_jax import configs


def get_config():
  config = configs.base_config()
  config.name = "mmar_0p5b"
  config.model.vocab_size = 151936
  config.model.hidden_size = 896
  config.model.intermediate_size = 4864
  config.model.num_layers = 24
  config.model.num_heads = 14
  config.model.num_kv_heads = 2
  config.model.rope_theta = 1_000_000.0
  config.model.rms_norm_eps = 1e-6
  config.model.tie_word_embeddings = True
  config.model.max_seq_len = 32768
  return config
