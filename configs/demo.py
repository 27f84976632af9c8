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
  # Two (t, noise) draws a token instead of MAR's 4: the head was 40% of this model's FLOPs, and
  # halving its batch made the step 30% faster; 4 with 700 steps in the same minutes did not
  # learn to draw [ours].
  config.diffusion.diffusion_batch_mul = 2
  # The head trains on half of each row's image slots, the masked ones: on average a row masks
  # 17 of its 81 (9 image places x 9 tokens), at most ~60; 41 slots drop ~1% of masked tokens and
  # make the step 25% faster (diffusion.head_capacity) [ours].
  config.diffusion.head_capacity = 0.5
  config.diffusion.num_sampling_steps = 50
  config.diffusion.num_generation_steps = 9  # One token a step: 9 tokens are cheap [ours].
  # Lossless pixel patches: the demo needs no pretrained VAE. 24x24 images in 8x8 patches: 9
  # tokens of 192, one per cell of the dataset's 3x3 grid, so a shape lies in one token.
  config.tokenizer.kind = "patch"
  config.tokenizer.image_size = 24
  config.tokenizer.patch_size = 8
  config.tokenizer.dtype = "float32"
  # A small model trained from scratch for minutes does not tell the image slots apart by RoPE
  # alone (every masked slot got nearly the same z, and the head drew the same faint token
  # everywhere): a learned embedding per slot, as MAR's decoder has [MAR].
  config.model.image_position_embedding = True
  # The v-loss is ~10x smaller than the CE and its gradient reaches the backbone only through
  # the head's zero-initialised modulations; weighted 1, the backbone learned nothing about
  # captions for generation in 1000 steps [ours].
  config.loss.diffusion_weight = 10.0
  config.data.source = "synthetic"
  config.data.synthetic_records = 10_000
  config.data.seq_len = 128
  config.data.batch_size = 16
  config.data.packing = True
  # Records are drawn in the training process: on 2 cores a worker process costs the step more
  # (500 ms against 390 ms a step, measured) than drawing 24x24 shapes in-process [ours].
  config.data.num_workers = 0
  config.data.tokenizer = "demo"
  # Plain backgrounds: per-pixel noise is unpredictable by construction and would dominate the
  # v-loss of a model this small trained this briefly [ours].
  config.data.synthetic_noisy_backgrounds = False
  config.data.generation_fraction = 0.75  # Generation is the slower half to learn; qa_turns feeds understanding.
  # CE on the generation captions too: language modelling of the captions is what teaches the
  # backbone their structure (which colour and shape go with which position) early enough for
  # the head to use it within the demo's minutes [ours].
  config.data.caption_loss = True
  # Up to 4 questions about each understanding image, one turn after another: 4x the answers
  # per image for ~25 more tokens, which took held-out answers from below the majority baseline
  # to well above it at the same step budget [ours].
  config.data.qa_turns = 4
  # `make demo`: at most 9 minutes of training on 2 CPU cores (1000 steps take ~6 on a quiet
  # 2-core box), then the held-out evaluation; a rerun continues from the last checkpoint.
  # Drawing is learnt late: judged at chance at step 400, a fifth right at 600, almost all
  # colours and positions by 1000. A 500-step schedule, 600 steps at lr 2e-3, and 1000 steps
  # of batch 8 did not get there [ours, measured].
  config.train.num_steps = 1000
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 100
  config.train.log_every = 25
  config.train.checkpoint_every = 200
  config.train.eval_every = 500
  # An average over the last ~100 of the 1000 steps (0.9999's 10,000 would still be mostly the init).
  config.train.ema_decay = 0.99
  config.train.eval_samples = 8  # Of each set (unseen, seen): the hook's 16 records as before the split.
  config.train.time_limit_s = 540.0
  return config
