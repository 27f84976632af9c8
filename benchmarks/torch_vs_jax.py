"""Images/s and text tokens/s of mmar_jax and mmar_torch on the same model and machine.

    python benchmarks/torch_vs_jax.py [--ckpt RUN] [--config configs/demo.py] [--images 8]
        [--num_steps 9] [--sampling_steps 50] [--cfg 3.0] [--new_tokens 32] [--iters 3] [--torch_threads 1] [--json]

Without --ckpt the demo config's model is initialised at random (speed does not depend on
training) and saved as a checkpoint in a temporary directory; either way it goes through
`export-torch`'s code (convert/hf_export.py) and both sides run float32 on this machine's CPU:
a batch of `--images` guided generations, and greedy describe of `--images` images with up to
`--new_tokens` answer tokens (both sides give the same answers, so the same tokens are timed;
their count is printed). Each figure is the median of `--iters` runs after a warm-up (jax compiles then).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import flax.linen as nn
import jax
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from benchmarks.backbone_cpu import median_seconds  # noqa: E402
from mmar_jax import checkpoint, configs  # noqa: E402
from mmar_jax.convert import hf_export  # noqa: E402
from mmar_jax.infer import describe, generate_image  # noqa: E402
from mmar_jax.train import experiment  # noqa: E402
from mmar_torch import MMARTorch  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ckpt")
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--images", type=int, default=8)
  parser.add_argument("--num_steps", type=int, default=9)
  parser.add_argument("--sampling_steps", type=int, default=50)
  parser.add_argument("--cfg", type=float, default=3.0)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--iters", type=int, default=3)
  # 1 by default: on the shared 2-core dev box torch's two OpenMP threads spin against other
  # work, and one small forward took 97 ms with 2 threads against 6.6 ms with 1 (measured).
  parser.add_argument("--torch_threads", type=int, default=1)
  report.add_json_flag(parser)
  args = parser.parse_args()

  torch.set_num_threads(args.torch_threads)
  tmp = tempfile.mkdtemp(prefix="torch_vs_jax_")
  if args.ckpt:
    params, config, _ = checkpoint.load_params(args.ckpt, need_vae=False)
  else:
    config = configs.load_config(args.config, ("model.dtype=float32", "head.dtype=float32"))
    params = jax.tree.map(np.asarray, nn.unbox(experiment.build(config).init_params(jax.random.key(0))))
  exp = experiment.build(config)
  hf_export.torch_dir(params, config, os.path.join(tmp, "torch"))
  theirs = MMARTorch.from_pretrained(os.path.join(tmp, "torch"), device="cpu", dtype=torch.float32)
  ids = exp.special_ids
  captions = [exp.text_tokenizer.encode("a large red circle at the left").ids] * args.images
  settings = generate_image.generation_settings(config, num_steps=args.num_steps,
                                                num_sampling_steps=args.sampling_steps, cfg_scale=args.cfg)

  def jax_images():
    jax.block_until_ready(generate_image.generate(exp.model, params, captions, ids, jax.random.key(0), **settings))

  def torch_images():
    theirs.generate_tokens(captions, num_steps=args.num_steps, sampling_steps=args.sampling_steps, cfg_scale=args.cfg,
                           generator=torch.Generator().manual_seed(0))

  image_tokens = np.random.default_rng(0).uniform(-1, 1, (args.images, exp.num_image_tokens,
                                                          exp.image_tokenizer.token_dim)).astype(np.float32)
  questions = [exp.text_tokenizer.encode("what colour is the shape ?").ids] * args.images

  def jax_text():
    answers = describe.describe(exp.model, params, image_tokens, questions, ids, max_new_tokens=args.new_tokens)
    return sum(map(len, answers))

  def torch_text():
    answers = theirs.describe_tokens(torch.from_numpy(image_tokens), questions, max_new_tokens=args.new_tokens)
    return sum(map(len, answers))

  jax_tokens, torch_tokens = jax_text(), torch_text()
  with torch.inference_mode():
    result = {
        "images": args.images, "num_steps": args.num_steps, "sampling_steps": args.sampling_steps, "cfg": args.cfg,
        "jax_images_per_s": args.images / median_seconds(jax_images, args.iters),
        "torch_images_per_s": args.images / median_seconds(torch_images, args.iters),
        "jax_text_tokens_per_s": jax_tokens / median_seconds(jax_text, args.iters),
        "torch_text_tokens_per_s": torch_tokens / median_seconds(torch_text, args.iters),
        "answer_tokens": [jax_tokens, torch_tokens], "torch_threads": args.torch_threads, "torch": torch.__version__, "jax": jax.__version__,
    }
  result["images_ratio_torch_over_jax"] = result["torch_images_per_s"] / result["jax_images_per_s"]
  result["text_ratio_torch_over_jax"] = result["torch_text_tokens_per_s"] / result["jax_text_tokens_per_s"]
  print(f"{args.images} images, {args.num_steps} AR steps x {args.sampling_steps} sampling steps, cfg {args.cfg}; "
        f"describe of {args.images} images ({jax_tokens} / {torch_tokens} answer tokens, jax / torch)")
  print("| | images/s | text tokens/s |\n|---|---|---|")
  print(f"| mmar_jax (jax {jax.__version__}) | {result['jax_images_per_s']:.3f} | {result['jax_text_tokens_per_s']:.1f} |")
  print(f"| mmar_torch (torch {torch.__version__}, {args.torch_threads} thread(s)) | {result['torch_images_per_s']:.3f} | "
        f"{result['torch_text_tokens_per_s']:.1f} |")
  print(f"| ratio torch / jax | {result['images_ratio_torch_over_jax']:.2f}x | "
        f"{result['text_ratio_torch_over_jax']:.2f}x |")
  report.emit(args, "torch_vs_jax", result)


if __name__ == "__main__":
  main()
