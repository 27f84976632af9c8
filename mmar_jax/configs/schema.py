"""The config schema: every field with its one default, and the names each enumerated field allows.

Presets in `configs/<name>.py` start from `base_config()` and override what differs, so a field has
exactly one default; the narrow views the layers get (`BackboneConfig`, `HeadConfig`, ...) have
required fields only and are built from a config. Each enumerated field's allowed values are
declared here once, and the code that implements them refers to these tuples.
"""

from __future__ import annotations

import ml_collections

DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
MESH_AXES = ("data", "fsdp", "tensor")
NOISE_SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("v", "eps", "x0")
SAMPLERS = ("ddpm", "ddim")
CFG_SCHEDULES = ("linear", "constant")
MASK_RATIO_DISTS = ("uniform", "truncnorm")
TOKENIZER_KINDS = ("patch", "kl16")
DATA_SOURCES = ("synthetic", "manifest", "tfds", "latents", "mixture")
# How a non-square image becomes the square input (mmar_jax/data/images.py).
IMAGE_RESIZES = ("center_crop", "pad_to_square")
# The backbone projections LoRA can adapt (mmar_jax/models/lora.py adds the factors).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")

# Logical axis -> mesh axis (or axes). One table decides every sharding: parameters and
# activations name logical axes only. Activations have names of their own (MaxText's split), so a
# parameter's axis and the activation dimension it produces can be sharded independently: sequence
# or tensor-parallel activations are a change of this table, never of the model. 'batch' and
# 'length' name only activations (and the input batches, data/pipeline.py).
DEFAULT_LOGICAL_AXIS_RULES = (
    # Parameters.
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("lora", None),  # LoRA's rank axis: small, replicated.
    # A LoRA factor's side that is not the model width (heads x head_dim or mlp, flattened): split
    # over tensor and FSDP, since the factor has no `embed` axis for FSDP to take.
    ("lora_features", ("tensor", "fsdp")),
    # Activations: the batch over every data-parallel axis, the model width whole.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("activation_embed", None),
    ("activation_vocab", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
)
# Every logical axis the modules name: each needs a rule (validation checks it).
LOGICAL_AXES = tuple(name for name, _ in DEFAULT_LOGICAL_AXIS_RULES)


def base_config() -> ml_collections.ConfigDict:
  """Every field with its default. Presets override; nothing else defines defaults."""
  config = ml_collections.ConfigDict()
  config.name = "base"
  config.seed = 0

  # The Qwen2 decoder. Defaults are Qwen2-0.5B's, the paper's MMAR-0.5B backbone.
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 151936
  # Rows of the Hugging Face checkpoint the table was imported from (import-hf records it; 0 = not
  # imported). Rows past it are MMAR's own; export-hf writes only the first hf_vocab_size rows.
  config.model.hf_vocab_size = 0
  config.model.hidden_size = 896
  config.model.intermediate_size = 4864
  config.model.num_layers = 24
  config.model.num_heads = 14
  config.model.num_kv_heads = 2
  config.model.head_dim = 0  # 0: hidden_size // num_heads, as in Qwen2.
  config.model.rope_theta = 1_000_000.0
  config.model.rms_norm_eps = 1e-6
  config.model.tie_word_embeddings = True
  config.model.max_seq_len = 32768  # Longest sequence the model is used with (HF max_position_embeddings).
  config.model.init_std = 0.02
  config.model.dtype = "bfloat16"  # Compute dtype of matmuls; parameters stay in param_dtype.
  config.model.param_dtype = "float32"
  config.model.scan_layers = True  # nn.scan over layers: compile time independent of depth.
  config.model.remat_policy = "none"  # One of REMAT_POLICIES.
  config.model.attention_impl = "auto"  # jax.nn.dot_product_attention's: auto = cuDNN on GPU in 16 bits, else XLA.
  # LoRA on the backbone's projections (mmar_jax/models/lora.py). rank 0 = full fine-tuning;
  # rank > 0 freezes the base weights and trains the factors, the adapter, the head and the
  # embedding rows (the "image expert" reading of the paper, shared/MMAR.md) [ours, inferred].
  config.model.lora = ml_collections.ConfigDict()
  config.model.lora.rank = 0
  config.model.lora.alpha = 256.0  # The update is scaled by alpha / rank [LoRA].
  # Every linear map of the decoder: the LLM must learn a new modality, not a new style, and LoRA
  # on all linear layers is what matches full fine-tuning (QLoRA, Dettmers et al. 2023) and is
  # LLaVA-1.5's LoRA recipe; ('q', 'v') is the original LoRA paper's cheaper choice [ours].
  config.model.lora.targets = LORA_TARGETS
  # The image input adapter (the paper's EmbeddingViT + VisProjector; sizes unpublished [ours]):
  # a bidirectional transformer over one image's tokens, then an MLP to hidden_size.
  config.model.adapter_depth = 2  # Transformer blocks; 0 = a linear map from the token width.
  config.model.adapter_width = 1024
  config.model.adapter_heads = 16
  # A learned embedding per image slot added to the image tokens' inputs (visible and <mask>
  # alike), as MAR's decoder has. The paper adds none beyond RoPE [paper], and a pretrained LLM
  # tells slots apart through RoPE; a small model trained from scratch barely does: every masked
  # slot then gets nearly the same z and the head draws the same token everywhere [ours].
  config.model.image_position_embedding = False
  # The text cross-entropy's LM head a block of this many positions at a time, each block's
  # logits recomputed in the backward pass: no [batch, seq_len, vocab] float32 logits (0.6 GiB a
  # 1024-token row at Qwen2's vocabulary) nor their gradient are ever live. 0 = dense, all at once.
  # A seq_len it does not divide is padded with weight-0 positions [ours].
  config.model.ce_chunk_size = 0
  config.model.adapter_remat = False  # nn.remat each adapter block: recompute its activations in the backward pass.
  # MAR-style masked generation: the share of an image's tokens masked, drawn per image in
  # [mask_ratio_min, mask_ratio_max]. Stage 1 of the paper draws from [0.7, 1.0] (the default);
  # stage 2 from [0, 1.0]: set --config.model.mask_ratio_min=0 for it [paper].
  config.model.mask_ratio_min = 0.7
  config.model.mask_ratio_max = 1.0
  # One of MASK_RATIO_DISTS. 'uniform' over the range (the paper states only the range);
  # 'truncnorm' is MAR's N(loc, std^2) truncated to the range (MAR: loc 1.0, std 0.25, so most
  # draws mask nearly everything) [MAR]. The default is uniform [ours].
  config.model.mask_ratio_dist = "uniform"
  config.model.mask_ratio_loc = 1.0  # 'truncnorm' only: the Gaussian's mean before truncation [MAR].
  config.model.mask_ratio_std = 0.25  # 'truncnorm' only: its standard deviation [MAR].

  # The joint loss ce_weight * CE + diffusion_weight * v_loss, each term normalised by its own
  # token count. The paper's Eq. 4 is the unweighted sum, hence 1 and 1; the weights are not
  # published, and the paper notes the task balance needs tuning [ours].
  config.loss = ml_collections.ConfigDict()
  config.loss.ce_weight = 1.0
  config.loss.diffusion_weight = 1.0

  # Optimisation and the training loop (mmar_jax/train). AdamW (0.9, 0.95), weight decay 0.02 and
  # lr 1e-4 x batch / 256 are MAR's [MAR]; the paper publishes no schedule [ours: warmup + cosine].
  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 100_000  # Optimizer steps (one global batch each, accumulation included).
  config.train.learning_rate = 1e-4  # Peak; MAR scales it by batch / 256, set it for your batch.
  config.train.warmup_steps = 1000  # Linear warmup from 0 to the peak.
  config.train.end_lr_fraction = 0.1  # Cosine decay to this fraction of the peak at num_steps.
  config.train.adam_b1 = 0.9
  config.train.adam_b2 = 0.95
  config.train.adam_eps = 1e-8
  config.train.weight_decay = 0.02  # Decoupled (AdamW); not on norm scales, biases or 1-d parameters.
  config.train.grad_clip_norm = 1.0  # Clip by global norm; 0 = off.
  # EMA of the trainable params after every update (train/ema.py; MAR's 0.9999); 0 = none.
  # evaluate, generate, describe and the exports read it by default (--weights raw: the params).
  config.train.ema_decay = 0.9999
  # A fresh run (no checkpoint in its workdir) starts from these weights: any checkpoint that
  # `load_params` reads (a run, a step, import-hf, import-torch), its EMA where it has one. Every
  # leaf the checkpoint has must have the model's shape; leaves only the model has (new LoRA
  # factors) stay fresh. The optimizer starts fresh. "" = the model's own initialisation.
  config.train.init_params = ""
  config.train.grad_accum_steps = 1  # Micro-batches per step (lax.scan); data.batch_size is the global total.
  # A non-finite loss or gradient skips the update (optax.apply_if_finite); this many in a row
  # stops the run with the last good checkpoint kept.
  config.train.max_consecutive_skips = 10
  config.train.log_every = 50  # Steps between metric writes (console, TensorBoard).
  config.train.checkpoint_every = 1000  # Steps between (asynchronous) Orbax checkpoints.
  config.train.keep_checkpoints = 3  # The last K are kept.
  config.train.eval_every = 5000  # Steps between evaluation hooks (sampled images, answers); 0 = off.
  config.train.eval_samples = 8  # Held-out records the hook generates / answers.
  config.train.peak_flops_per_device = 0.0  # For MFU; 0 = the device's data-sheet figure (train/metrics.py).
  config.train.time_limit_s = 0.0  # Stop (with a checkpoint) after this much training time; 0 = none.

  # The MAR diffusion head: an MLP of AdaLN residual blocks modelling p(x | z) per image token.
  # Sizes are MAR's (depth/width 6/1024 B, 8/1280 L, 12/1536 H); the default is MAR-B's.
  config.head = ml_collections.ConfigDict()
  config.head.depth = 6
  config.head.width = 1024
  config.head.frequency_dim = 256  # Sinusoidal timestep features, as in DiT/MAR.
  config.head.norm_eps = 1e-6
  config.head.dtype = "bfloat16"  # Compute dtype; the loss, the schedule and the sampler stay float32.
  config.head.param_dtype = "float32"
  config.head.remat = False  # nn.remat each residual block: recompute its activations in the backward pass.

  # The diffusion process around the head (MAR's, with the paper's v-prediction).
  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "cosine"  # One of NOISE_SCHEDULES.
  config.diffusion.num_train_steps = 1000
  config.diffusion.num_sampling_steps = 100  # Respaced from num_train_steps, evenly, ends included.
  config.diffusion.prediction = "v"  # One of PREDICTIONS; the paper's ablation compares v and eps.
  config.diffusion.diffusion_batch_mul = 4  # (t, noise) draws per token, folded into one head batch.
  # Share of a row's image slots (max images x N) the head trains on: the masked ones, a random
  # subset of them if more are masked. 1 runs it on every slot, as MAR does; a packed row's
  # masked slots are a fraction of them, so less does the same work (train/metrics logs
  # head_overflow, the share of masked tokens that did not fit) [ours].
  config.diffusion.head_capacity = 1.0
  config.diffusion.sampler = "ddpm"  # One of SAMPLERS; MAR samples with DDPM.
  config.diffusion.temperature = 1.0  # Scales the DDPM noise std (MAR's temperature).
  config.diffusion.ddim_eta = 0.0  # 0: deterministic DDIM.
  config.diffusion.cfg_scale = 3.0  # Classifier-free guidance; MAR reports ~3 with the linear schedule.
  config.diffusion.cfg_schedule = "linear"  # One of CFG_SCHEDULES: MAR ramps 1 -> cfg_scale over AR steps.
  # AR steps of image generation: each reveals a share of the tokens in a random order, on MAR's
  # cosine schedule. MAR uses 64 for 256 tokens (256 for its best FID); capped at the image's
  # token count, since MAR's rule reveals at least one token a step.
  config.diffusion.num_generation_steps = 64

  # Image tokenizer: pixels (NHWC, [-1, 1]) <-> continuous tokens [B, N, D]. Defaults are MAR's KL-16.
  config.tokenizer = ml_collections.ConfigDict()
  config.tokenizer.kind = "kl16"  # One of TOKENIZER_KINDS: 'patch' (lossless pixel patches) or 'kl16'.
  config.tokenizer.image_size = 256
  config.tokenizer.patch_size = 4  # 'patch' only: a token is a patch_size x patch_size x 3 pixel patch.
  config.tokenizer.patch_scale = 1.0  # 'patch' only: tokens = patches * patch_scale (a power of 2, so exact).
  config.tokenizer.latent_patch = 1  # 'kl16' only: p x p latent positions form one token; 1 = MAR.
  config.tokenizer.vae_checkpoint = ""  # 'kl16': convert-vae output dir, MAR torch file or safetensors.
  config.tokenizer.dtype = "bfloat16"  # Compute dtype of the VAE convolutions; posterior stays float32.
  # Tokens from a posterior sample (mean + std * noise), as MAR trains; False takes the posterior
  # mean. The same for pixels encoded on the fly and for moments from the latent cache.
  config.tokenizer.sample_posterior = True
  config.tokenizer.scale_factor = 0.2325  # MAR's KL-16 latent scale: tokens = latents * scale_factor.
  # The VAE architecture (LDM AutoencoderKL as MAR's KL-16 builds it).
  config.tokenizer.vae_channels = 128
  config.tokenizer.vae_channel_mult = (1, 1, 2, 2, 4)
  config.tokenizer.vae_num_res_blocks = 2
  config.tokenizer.vae_z_channels = 16
  config.tokenizer.vae_norm_groups = 32
  # Encoder levels (0 = full resolution) whose res blocks are each followed by self-attention.
  # MAR's attn_resolutions=(16,) at resolution 256 is level 4, the 16x16 one.
  config.tokenizer.vae_encoder_attn_levels = (4,)

  # Device mesh: one axis size may be -1 ("the rest of the devices"). data, fsdp and tensor are
  # the sizes within one slice (TPU) or host (GPU), over the fast interconnect (ICI / NVLink).
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  # Slices or hosts that the data and fsdp axes also span over the data-centre network (DCN), as
  # MaxText's dcn_*_parallelism: mesh axis 'data' is dcn_data x data devices long. Their product
  # must equal the number of slices (or of processes where devices have no slices, e.g. GPUs).
  # Tensor parallelism never crosses the DCN: it communicates every layer.
  config.mesh.dcn_data = 1
  config.mesh.dcn_fsdp = 1
  config.mesh.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES

  # Multi-process jobs (train/distributed.py, launch/): jax.distributed's waits, in seconds.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialization_timeout_s = 300  # For every process to join at start.
  # A process silent this long counts as lost and the others stop (exit 75, naming it): the bound
  # on how long a job runs on with a dead process. jax's default; heartbeats come from a thread,
  # so long compiles or checkpoint writes do not delay them.
  config.distributed.heartbeat_timeout_s = 100
  config.distributed.shutdown_timeout_s = 300  # At exit, for the others to finish too.

  # The input pipeline (mmar_jax/data): source, task sequences, batching, workers.
  config.data = ml_collections.ConfigDict()
  config.data.source = "synthetic"  # One of DATA_SOURCES.
  config.data.manifest = ""  # JSONL manifest for source='manifest'; image paths relative to it.
  # source='latents': a directory written by `prepare-data --cache-latents` (its --out); the
  # tokenizer section must be the VAE that wrote it (checked at start-up).
  config.data.latents_dir = ""
  # source='latents': each epoch, half the records (drawn per record from data.seed) train on the
  # mirrored image's cached moments, MAR's flip augmentation; False always takes the image's own.
  config.data.latents_flip = True
  # source='mixture': "KIND:LOCATION@WEIGHT" entries, comma-separated (data/mixture.py), e.g.
  # "manifest:a.jsonl@3,manifest:b.jsonl@1"; records drawn from each in proportion to its weight.
  config.data.mixture = ""
  # Share of each source's records held out of training by a hash of the record's index
  # (data/holdout.py), stable across process counts and resumes; their mean loss is logged
  # every train.eval_every steps as val/loss, val/ce and val/v_loss. 0 holds nothing out.
  config.data.validation_fraction = 0.0
  # source='tfds': a dataset the user prepared in array_record format; nothing downloads.
  config.data.tfds_name = ""
  config.data.tfds_split = "train"
  config.data.tfds_data_dir = ""  # '' = tfds's default directory.
  config.data.tfds_image_key = "image"  # Feature with pixels or encoded image bytes.
  config.data.tfds_caption_key = "caption"  # '' when the dataset has no captions.
  config.data.tfds_question_key = ""  # Set both to read question / answer pairs.
  config.data.tfds_answer_key = ""
  config.data.synthetic_records = 100_000  # Size of the synthetic shapes dataset (one epoch).
  config.data.synthetic_noisy_backgrounds = True  # Pixel noise on half the backgrounds (False: all plain).
  # (colour, shape, position) triples whose index sum is a multiple of this (18 of 162 for 9)
  # never appear in the synthetic training records; evaluation reports them apart, as unseen
  # combinations (data/synthetic.py). 0 holds nothing out; else 2..9.
  config.data.synthetic_held_out_modulus = 9
  config.data.seq_len = 1024  # Tokens per row, text and image slots together.
  config.data.batch_size = 256  # Global rows per step, split evenly over hosts.
  config.data.generation_fraction = 0.5  # Share of records made generation sequences [ours].
  config.data.caption_dropout = 0.1  # Generation captions dropped for CFG, as MAR drops labels [ours].
  config.data.caption_loss = False  # Cross-entropy on generation captions too (answers always).
  # Question / answer pairs an understanding sequence asks about its image, one turn after
  # another (LLaVA's multi-turn conversations); fewer when the record has fewer or they do not fit.
  config.data.qa_turns = 1
  config.data.packing = False  # Pack several sequences per row (segment ids, restarted positions).
  config.data.packing_bins = 8  # First-fit packing: rows filled at once.
  config.data.num_workers = 8  # Grain worker processes decoding records; 0 decodes in-process.
  config.data.worker_buffer_size = 4  # Records buffered per worker.
  config.data.seed = 0  # Shuffling (a new order every epoch), task choice and caption dropout.
  config.data.max_corrupt_fraction = 0.01  # Stop when more than this share of records is corrupt.
  # How an image becomes config.tokenizer.image_size square RGB pixels (data/images.py), alike for
  # training and the latent cache (which records them). One of IMAGE_RESIZES: 'center_crop' is
  # MAR's (ADM's) crop of the centre square; 'pad_to_square' keeps the whole image, its long side
  # resized to the target and the rest padded with image_background.
  config.data.image_resize = "center_crop"
  # Behind transparent pixels (RGBA, LA, a palette's transparency) and around padded images: a
  # PIL colour name or '#rrggbb'. White, as a transparent image is usually shown.
  config.data.image_background = "white"
  # Images whose short side is below this are skipped as corrupt; smaller than the target but at
  # least this are upscaled (prepare-data and training count them).
  config.data.min_image_size = 16
  config.data.tokenizer = "demo"  # 'demo' (built from the synthetic grammar) or a dir/tokenizer.json.
  return config

