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
  # Wider than the 192-feature pixel tokens it models: a 128-wide head was a bottleneck [ours].
  config.head.depth = 3
  config.head.width = 256
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
  # Plain backgrounds: per-pixel noise is unpredictable by construction and would dominate the
  # v-loss of a model this small trained this briefly [ours].
  config.data.synthetic_noisy_backgrounds = False
  config.data.generation_fraction = 0.6
  # `make demo`: at most 8 minutes of training on 2 CPU cores (about 1000 steps), then the
  # held-out evaluation; a rerun continues from the last checkpoint.
  config.train.num_steps = 1200
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 100
  config.train.log_every = 25
  config.train.checkpoint_every = 200
  config.train.eval_every = 400
  config.train.eval_samples = 16
  config.train.time_limit_s = 480.0
  return config
