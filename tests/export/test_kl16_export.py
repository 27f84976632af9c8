"""export-torch of a small KL-16 model trained a few steps here (its VAE random, as a user's
converted one would be fixed): mmar_torch's tokenizer, generation and describe agree with ours."""

from __future__ import annotations

import json

import jax
import numpy as np
import torch

from mmar_jax import checkpoint, configs
from mmar_jax.convert import vae_ckpt
from mmar_jax.infer import describe, generate_image
from mmar_jax.models import kl_vae, tokenizers
from mmar_jax.train import experiment
from mmar_torch import MMARTorch
from tests.data.test_manifest import write_images
from tests.export.test_torch import jax_draws
from tests.train import tiny

KL16 = {"tokenizer.kind": "kl16", "tokenizer.image_size": 8, "tokenizer.latent_patch": 2, "tokenizer.dtype": "float32",
        "tokenizer.vae_channels": 16, "tokenizer.vae_channel_mult": (1, 2), "tokenizer.vae_num_res_blocks": 1,
        "tokenizer.vae_z_channels": 4, "tokenizer.vae_norm_groups": 8, "tokenizer.vae_encoder_attn_levels": (1,),
        "model.dtype": "float32", "head.dtype": "float32"}


def test_a_kl16_model_exports_and_agrees(tmp_path):
  from tests.export.conftest import mmar_jax
  config = configs.with_values(KL16, tiny.config())
  vae_config = kl_vae.VAEConfig.from_config(config)
  vae = tokenizers.KLVAE(tokenizers.TokenizerConfig.from_config(config)).init_params(jax.random.key(1))
  vae_ckpt.save(str(tmp_path / "vae"), vae, vae_config)
  # Trained 3 steps on a manifest of drawn shapes (read at 8 px) that the VAE encodes on the fly:
  # the head's zero-initialised modulations and output have moved, so it predicts something of its own.
  records = write_images(tmp_path, 8)
  (tmp_path / "m.jsonl").write_text("".join(json.dumps({"image": f"images/{i}.png", "caption": r["caption"]}) + "\n"
                                            for i, r in enumerate(records)))
  workdir = str(tmp_path / "run")
  tiny.run(workdir, *(f"{k}={v}" for k, v in KL16.items()), f"tokenizer.vae_checkpoint={tmp_path / 'vae'}",
           "data.source=manifest", f"data.manifest={tmp_path / 'm.jsonl'}", "train.num_steps=3",
           "train.checkpoint_every=3", "train.ema_decay=0.5")
  mmar_jax("export-torch", f"--ckpt={workdir}", f"--out={tmp_path / 'torch'}")
  params, config, step = checkpoint.load_params(workdir)
  assert step == 3 and config.tokenizer.kind == "kl16"
  head_out = np.asarray(jax.tree.leaves(params["head"])[-1])
  assert np.abs(head_out).max() > 0  # Trained off its zero init.
  exp = experiment.build(config)
  gen = np.random.default_rng(0)
  theirs = MMARTorch.from_pretrained(tmp_path / "torch")
  tokenizer_params = exp.image_tokenizer_params()

  pixels = gen.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  tokens = np.asarray(exp.image_tokenizer.encode(tokenizer_params, pixels))
  assert tokens.shape == (2, 4, 16)
  np.testing.assert_allclose(theirs.image_tokenizer.encode(torch.from_numpy(pixels)).numpy(), tokens, atol=1e-4,
                             rtol=0)

  questions = [exp.text_tokenizer.encode("what colour ?").ids, []]
  mine = describe.describe(exp.model, params, tokens, questions, exp.special_ids, max_new_tokens=4)
  assert theirs.describe_tokens(torch.from_numpy(tokens.copy()), questions, max_new_tokens=4) == mine

  captions = [exp.text_tokenizer.encode("red circle").ids]
  settings = generate_image.generation_settings(config, num_steps=2, num_sampling_steps=3, cfg_scale=2.0)
  ours_tokens = np.asarray(generate_image.generate(exp.model, params, captions, exp.special_ids, jax.random.key(3),
                                                   **settings))
  order, draws = jax_draws(3, 1, 4, 2, 3, 16)
  queue = [d for step in draws for d in step]
  torch_tokens = theirs.generate_tokens(captions, num_steps=2, sampling_steps=3, cfg_scale=2.0,
                                        order=torch.tensor(order),
                                        noise=lambda shape: torch.from_numpy(queue.pop(0)[:, :shape[1]].copy()))
  np.testing.assert_allclose(torch_tokens.numpy(), ours_tokens, atol=1e-3, rtol=0)
  decoded = np.asarray(exp.image_tokenizer.decode(tokenizer_params, ours_tokens))
  np.testing.assert_allclose(theirs.image_tokenizer.decode(torch_tokens).numpy(), decoded, atol=1e-3, rtol=0)
