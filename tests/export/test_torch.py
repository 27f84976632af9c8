"""mmar_torch against mmar_jax on one trained, exported model: the same numbers, the same picture."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mmar_jax.infer import describe, generate_image, image_io
from mmar_jax.models.mmar import MMAR
from mmar_jax.train import experiment
from mmar_torch import MMARTorch
from mmar_torch.model import ExportError
from mmar_torch.tokenizer import images_from_pixels
from tests.export.text import our_text_logits, text_batch, torch_text_logits

ROWS = 512  # export-torch keeps the whole table (tests/export/conftest.py).


@pytest.fixture(scope="module")
def ours(exported):
  return experiment.build(exported.config)


@pytest.fixture(scope="module")
def theirs(exported):
  return MMARTorch.from_pretrained(exported.torch_dir, device="cpu", dtype=torch.float32)


def test_text_logits_agree(exported, theirs):
  ids, mask = text_batch(np.random.default_rng(1), high=ROWS)
  ours_logits = our_text_logits(exported, ids, mask)[..., :ROWS]
  torch_logits = theirs.text_logits(torch.tensor(ids, dtype=torch.long), torch.tensor(mask)).numpy()
  real = mask.astype(bool)
  np.testing.assert_allclose(torch_logits[real], ours_logits[real], atol=1e-4, rtol=0)


def test_the_backbone_directory_alone_loads_in_transformers(exported):
  model = transformers.AutoModelForCausalLM.from_pretrained(exported.torch_dir, dtype=torch.float32).eval()
  assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == ROWS
  ids, mask = text_batch(np.random.default_rng(2), high=ROWS)
  real = mask.astype(bool)
  np.testing.assert_allclose(torch_text_logits(model, ids, mask)[real],
                             our_text_logits(exported, ids, mask)[..., :ROWS][real], atol=1e-4, rtol=0)


def test_the_head_agrees(exported, ours, theirs):
  rng = np.random.default_rng(3)
  x_t = rng.standard_normal((16, 192)).astype(np.float32)
  t = rng.integers(0, 1000, 16).astype(np.float32)
  z = rng.standard_normal((16, 32)).astype(np.float32)
  mine = ours.model.apply({"params": exported.params}, x_t, t, z, method=MMAR.head_prediction)
  assert np.abs(np.asarray(mine)).max() > 1e-2  # Trained: not the zero the untrained head predicts.
  with torch.no_grad():
    torch_out = theirs.head(torch.tensor(x_t), torch.tensor(t), torch.tensor(z)).numpy()
  np.testing.assert_allclose(torch_out, np.asarray(mine), atol=1e-5, rtol=0)


def jax_draws(seed: int, batch: int, num_tokens: int, num_steps: int, sampling_steps: int, channels: int):
  """The reveal order and every normal draw `generate_image._sample_tokens` makes from `seed`:
  per AR step the initial x, then one draw per sampling step, each [batch, width, channels]."""
  remaining = generate_image.reveal_schedule(num_tokens, num_steps)
  width = int(np.max(remaining[:-1] - remaining[1:]))
  order_rng, step_rng = jax.random.split(jax.random.key(seed))
  order = jnp.argsort(jax.random.uniform(order_rng, (batch, num_tokens)), axis=-1)
  draws = []
  for i in range(len(remaining) - 1):
    rng, init_rng = jax.random.split(jax.random.fold_in(step_rng, i))
    step = [jax.random.normal(init_rng, (batch * width, channels))]
    for _ in range(sampling_steps):
      rng, noise_rng = jax.random.split(rng)
      step.append(jax.random.normal(noise_rng, (batch * width, channels)))
    draws.append([np.asarray(d).reshape(batch, width, channels) for d in step])
  return np.asarray(order), draws


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_one_whole_generation_gives_the_same_tokens_and_picture(exported, ours, theirs, sampler):
  settings = dict(num_steps=4, num_sampling_steps=8, cfg_scale=3.0, temperature=0.9, sampler=sampler)
  captions = [ours.text_tokenizer.encode(c).ids for c in ("red circle top left", "blue square")]
  mine = generate_image.generate(ours.model, exported.params, captions, ours.special_ids, jax.random.key(7),
                                 **generate_image.generation_settings(exported.config, **settings))
  order, draws = jax_draws(7, 2, 9, 4, 8, 192)
  queue = [d for step in draws for d in step]

  def noise(shape):  # Each AR step's draws, trimmed to the tokens that step reveals.
    return torch.from_numpy(queue.pop(0)[:, :shape[1]].copy())

  tokens = theirs.generate_tokens(captions, num_steps=4, sampling_steps=8, cfg_scale=3.0, temperature=0.9,
                                  sampler=sampler, order=torch.tensor(order), noise=noise)
  assert not queue
  mine = np.asarray(mine)
  assert np.abs(mine).max() > 0.1
  np.testing.assert_allclose(tokens.numpy(), mine, atol=1e-3, rtol=0)
  ours_png = image_io.to_uint8(ours.image_tokenizer.decode({}, mine))
  torch_png = np.stack([np.asarray(im) for im in images_from_pixels(theirs.image_tokenizer.decode(tokens))])
  close = np.abs(ours_png.astype(int) - torch_png.astype(int)) <= 1
  print(f"{sampler}: max token difference {np.abs(tokens.numpy() - mine).max():.2e}; "
        f"pixels within 1/255: {close.mean():.4%}; identical: {(ours_png == torch_png).mean():.4%}")
  assert close.mean() >= 0.99


def test_greedy_describe_gives_the_same_tokens(exported, ours, theirs):
  rng = np.random.default_rng(4)
  image_tokens = rng.uniform(-1, 1, (2, 9, 192)).astype(np.float32)
  questions = [ours.text_tokenizer.encode(q).ids for q in ("what colour is the shape ?", "")]
  mine = describe.describe(ours.model, exported.params, image_tokens, questions, ours.special_ids,
                           max_new_tokens=6)
  assert theirs.describe_tokens(torch.tensor(image_tokens), questions, max_new_tokens=6) == mine


def test_a_missing_or_misshapen_tensor_is_named(exported, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(exported.torch_dir, broken)
  head = load_file(broken / "mmar_head.safetensors")
  del head["final_layer.linear.weight"]
  save_file(head, broken / "mmar_head.safetensors")
  with pytest.raises(ExportError, match=r"mmar_head.safetensors: tensor final_layer.linear.weight is missing"):
    MMARTorch.from_pretrained(broken)
  adapter = load_file(broken / "mmar_adapter.safetensors")
  adapter["input_proj.weight"] = adapter["input_proj.weight"][:, :5].copy()
  save_file(adapter, broken / "mmar_adapter.safetensors")
  with pytest.raises(ExportError, match=r"tensor input_proj.weight has shape \(32, 5\), mmar_config.json implies "
                                        r"\(32, 192\)"):
    MMARTorch.from_pretrained(broken)


# Importing jax, flax or mmar_jax fails in this child: mmar_torch must not need them.
NO_JAX = """
import sys
for name in ("jax", "jaxlib", "flax", "mmar_jax"):
  sys.modules[name] = None
import torch
from mmar_torch import MMARTorch
model = MMARTorch.from_pretrained(sys.argv[1], device="cpu", dtype=torch.float32)
images = model.generate_images(["red circle"], num_steps=2, sampling_steps=2, generator=torch.Generator().manual_seed(0))
answers = model.describe(images, ["what colour is the shape ?"], max_new_tokens=3)
assert not [m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "mmar_jax") and sys.modules[m] is not None]
print(images[0].size, images[0].mode, type(answers[0]).__name__)
"""


def test_the_torch_package_generates_where_jax_cannot_be_imported(exported):
  result = subprocess.run([sys.executable, "-c", NO_JAX, exported.torch_dir], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=os.getcwd()))
  assert result.returncode == 0, result.stderr
  assert result.stdout.split("\n")[-2] == "(24, 24) RGB str"


def test_export_then_import_is_bit_exact_on_every_parameter(exported, tmp_path):
  from mmar_jax import checkpoint
  from mmar_jax.convert import hf_export
  from tests.export.conftest import mmar_jax
  mmar_jax("import-torch", f"--in={exported.torch_dir}", f"--out={tmp_path / 'back'}")
  back, config, _ = checkpoint.load_params(tmp_path / "back")
  assert config.model.lora.rank == 0
  _, merged = hf_export.merged_backbone(exported.params, exported.config)
  expected = dict(exported.params, backbone=merged)
  flat_back = dict(jax.tree_util.tree_leaves_with_path(back))
  flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
  assert sorted(map(jax.tree_util.keystr, flat_back)) == sorted(map(jax.tree_util.keystr, flat_expected))
  for path, value in flat_expected.items():
    assert np.asarray(flat_back[path]).tobytes() == np.asarray(value).tobytes(), jax.tree_util.keystr(path)


def test_import_of_a_misshapen_tensor_names_it_in_one_line(exported, tmp_path):
  from tests.export.conftest import mmar_jax
  broken = tmp_path / "broken"
  shutil.copytree(exported.torch_dir, broken)
  head = load_file(broken / "mmar_head.safetensors")
  head["res_blocks.0.mlp_in.weight"] = head["res_blocks.0.mlp_in.weight"][:7].copy()
  save_file(head, broken / "mmar_head.safetensors")
  result = mmar_jax("import-torch", f"--in={broken}", f"--out={tmp_path / 'ckpt'}", check=False)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if "error:" in line]
  assert lines == ["mmar-jax import-torch: error: mmar_head.safetensors: tensor res_blocks.0.mlp_in.weight has "
                   "shape (7, 32), the config implies (32, 32)"]
  assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow  # A tiny training run and a generation in child processes: ~60 s.
def test_a_model_changed_in_pytorch_comes_back_trains_and_samples(exported, tmp_path):
  # The journey back: weights changed on the PyTorch side (the head's last layer scaled, as a
  # fine-tune would move it), import-torch, then config.train.init_params starts a run from them.
  from mmar_jax import checkpoint
  from tests.export.conftest import mmar_jax
  from tests.train import tiny
  changed = tmp_path / "changed"
  shutil.copytree(exported.torch_dir, changed)
  head = load_file(changed / "mmar_head.safetensors")
  name = sorted(head)[-1]
  head[name] = head[name] * 1.5 + 0.01
  save_file(head, changed / "mmar_head.safetensors")
  mmar_jax("import-torch", f"--in={changed}", f"--out={tmp_path / 'back'}")
  back, _, _ = checkpoint.load_params(tmp_path / "back")
  rows = f"model.vocab_size={ROWS}"

  # The state a fresh run starts from holds exactly the imported weights, params and EMA.
  from mmar_jax.train import ema as ema_lib
  from mmar_jax.train import loop
  config = tiny.config(rows, f"train.init_params={tmp_path / 'back'}")
  run = loop.setup(config, str(tmp_path / "start"))
  try:
    state = run.with_params_from(config.train.init_params, run.fresh_state())
  finally:
    run.mngr.close()
  flat_back = dict(jax.tree_util.tree_leaves_with_path(back))
  for held in (state.params, ema_lib.merge(state.params, state.ema)):
    flat = dict(jax.tree_util.tree_leaves_with_path(held))
    assert sorted(map(jax.tree_util.keystr, flat)) == sorted(map(jax.tree_util.keystr, flat_back))
    for path, value in flat_back.items():
      assert np.asarray(flat[path]).tobytes() == np.asarray(value).tobytes(), jax.tree_util.keystr(path)

  # Trained for real, it moves off them, stays finite and samples.
  trained = str(tmp_path / "trained")
  out = tiny.run(trained, rows, f"train.init_params={tmp_path / 'back'}", "train.num_steps=2",
                 "train.checkpoint_every=2")
  assert f"initialised the params from {tmp_path / 'back'} (step 0); optimizer fresh" in out
  moved, _, _ = checkpoint.load_params(trained, weights="raw")
  diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(moved),
                                                                              jax.tree.leaves(back))]
  assert all(np.isfinite(diffs)) and max(diffs) > 1e-4
  picture = tmp_path / "picture.png"
  result = mmar_jax("generate", f"--ckpt={trained}", "--prompt=a red circle at the left", "--num-images=1",
                    "--steps=3", "--sampling-steps=4", f"--out={picture}")
  assert "1 images" in result.stdout or picture.exists(), result.stdout
  assert picture.stat().st_size > 0
