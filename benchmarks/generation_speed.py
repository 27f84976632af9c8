"""Inference speed: images/s of text-to-image generation, and text decoding with and without the KV cache.

    python benchmarks/generation_speed.py --config configs/demo.py [--batches 1,16,64] \
        [--new_tokens 256] [--prompt_len 32] [--decode_batch 1] [--json] [--override diffusion.cfg_scale=1 ...]

Generation runs `infer.generate_image.generate` (the AR loop, the diffusion sampler and the
guidance of the config's diffusion section) and the tokenizer's decode to pixels, timed after
one untimed call that compiles. Parameters are freshly initialised: speed does not depend on
their values.

Text decoding compares `infer.generate_text.greedy_decode` (prefill, then one cached step a
token, one jitted scan) with the same greedy loop that re-runs the backbone over the whole
sequence for every new token. With static shapes the re-run covers the full buffer
(prompt + new tokens) at every step; a re-run over only the tokens so far would cost
(P + T/2) / (P + T) of that on average, so that ratio is printed too. Both loops must
produce the same tokens (checked).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jaxtyping import Array, Int  # noqa: E402

from benchmarks import report  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.infer import generate_image, generate_text  # noqa: E402
from mmar_jax.models.backbone import Backbone, BackboneConfig  # noqa: E402
from mmar_jax.train import evaluation, experiment  # noqa: E402


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def recompute_greedy_decode(cfg: BackboneConfig, params, prompt_ids: Int[Array, "b p"], max_new_tokens: int
                            ) -> Int[Array, "b t"]:
  """Greedy continuation without a cache: every token re-runs the backbone over the whole buffer."""
  model = Backbone(cfg)
  batch, prompt_len = prompt_ids.shape
  buffer = jnp.zeros((batch, prompt_len + max_new_tokens), jnp.int32).at[:, :prompt_len].set(prompt_ids)

  def step(i, buffer):
    # Causal attention: the unfilled tail of the buffer cannot change the hidden state read here.
    hidden = model.apply(params, buffer, compute_logits=False).hidden
    last = jax.lax.dynamic_slice_in_dim(hidden, prompt_len + i - 1, 1, axis=1)
    logits = model.apply(params, last, method=Backbone.logits)[:, 0]
    return buffer.at[:, prompt_len + i].set(jnp.argmax(logits, axis=-1).astype(jnp.int32))

  return jax.lax.fori_loop(0, max_new_tokens, step, buffer)[:, prompt_len:]


def timed(fn, repeats: int) -> tuple[float, object]:
  """Median seconds of `fn()` over `repeats` calls after one untimed (compiling) call; and its last result."""
  out = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times)), out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--override", action="append", default=[], help="config override, e.g. diffusion.cfg_scale=1")
  parser.add_argument("--batches", default="1,16,64", help="generation batch sizes")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
  parser.add_argument("--new_tokens", type=int, default=256, help="text tokens decoded")
  parser.add_argument("--prompt_len", type=int, default=32, help="text prompt length for decoding")
  parser.add_argument("--decode_batch", type=int, default=1)
  report.add_json_flag(parser)
  args = parser.parse_args()
  config = configs.load_config(args.config, args.override)
  if args.prompt_len + args.new_tokens > config.model.max_seq_len:
    raise SystemExit(f"--prompt_len {args.prompt_len} + --new_tokens {args.new_tokens} exceeds "
                     f"config.model.max_seq_len={config.model.max_seq_len}")
  batches = [int(b) for b in args.batches.split(",")]
  exp = experiment.build(config)
  params = nn.meta.unbox(jax.jit(exp.init_params)(jax.random.key(0)))
  tokenizer_params = exp.image_tokenizer.init_params(jax.random.key(1))
  settings = generate_image.generation_settings(config)
  print(f"{config.name}: {jax.devices()[0].device_kind} ({jax.default_backend()}), {exp.num_image_tokens} image tokens "
        f"of {exp.image_tokenizer.token_dim}, {min(settings['num_steps'], exp.num_image_tokens)} AR steps, "
        f"{settings['num_sampling_steps']} {settings['sampler']} steps, cfg {settings['cfg_scale']} "
        f"({settings['cfg_schedule']}), compute {config.model.dtype}")

  records = evaluation.evaluation_sets(config, max(batches))["seen"]
  caption_ids = [exp.text_tokenizer.encode(r["caption"], add_special_tokens=False).ids for r in records]
  decode = jax.jit(exp.image_tokenizer.decode)
  generation = []
  for batch in batches:
    def generate(batch=batch):
      tokens = generate_image.generate(exp.model, params, caption_ids[:batch], exp.special_ids, jax.random.key(2),
                                       **settings)
      return decode(tokenizer_params, tokens)
    seconds, _ = timed(generate, args.repeats)
    print(f"generation batch {batch:>3}: {seconds:8.3f} s a batch, {batch / seconds:8.2f} images/s")
    generation.append({"batch": batch, "seconds": seconds, "images_per_s": batch / seconds})

  backbone_cfg, backbone_params = exp.model.cfg.backbone, {"params": params["backbone"]}
  prompt = jax.random.randint(jax.random.key(3), (args.decode_batch, args.prompt_len), 0, config.model.vocab_size)
  cached_s, cached = timed(lambda: generate_text.greedy_decode(
      backbone_cfg, backbone_params, prompt, jnp.ones_like(prompt), args.new_tokens), args.repeats)
  full_s, full = timed(lambda: recompute_greedy_decode(backbone_cfg, backbone_params, prompt, args.new_tokens),
                       args.repeats)
  tokens = args.decode_batch * args.new_tokens
  growing = (args.prompt_len + args.new_tokens / 2) / (args.prompt_len + args.new_tokens)
  print(f"text decoding, batch {args.decode_batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens "
        f"(same tokens: {bool(np.array_equal(cached, full))}):")
  print(f"  with KV cache:      {tokens / cached_s:10.1f} tokens/s")
  print(f"  re-running all:     {tokens / full_s:10.1f} tokens/s")
  print(f"  speedup: {full_s / cached_s:.1f}x (against a re-run over only the tokens so far, about "
        f"{full_s * growing / cached_s:.1f}x)")
  report.emit(args, "generation_speed", {
      "config": config.name, "device_kind": jax.devices()[0].device_kind, "generation": generation,
      "decode": {"batch": args.decode_batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                 "same_tokens": bool(np.array_equal(cached, full)), "cached_tokens_per_s": tokens / cached_s,
                 "recompute_tokens_per_s": tokens / full_s, "speedup": full_s / cached_s}})


if __name__ == "__main__":
  main()
