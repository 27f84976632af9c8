"""`mmar-jax generate` and `mmar-jax describe` on a checkpoint the training loop wrote.

The commands run in this process (`main.main`, absl's app.run and all), so that the jitted
generation and decoding compile once for the whole module.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from mmar_jax.cli import checkpoint_arg, main
from mmar_jax.data import images as images_lib, synthetic
from mmar_jax.infer import describe
from mmar_jax.models.mmar import as_variables
from mmar_jax.train import loop
from tests.infer import test_describe
from tests.train import tiny

# Flag-sharing subcommands: a real run imports one of them, these tests both.
INFERENCE_COMMANDS = ("mmar_jax.cli.generate", "mmar_jax.cli.describe", "mmar_jax.cli.eval_vqa")
# Few steps a sample, so that the tests time the command, not the sampler.
FAST = ("--steps=3", "--sampling-steps=5", "--num-images=3", "--batch-size=4")


def mmar_jax(capsys, *args: str) -> tuple[int, str, str]:
  """`mmar-jax ARGS` in this process: (exit code, stdout, stderr).

  As in a real run, only the chosen subcommand's flags exist and none is parsed yet: the
  inference commands' flags are dropped and their modules imported afresh by `main`.
  """
  for module in INFERENCE_COMMANDS:
    for flag in list(flags.FLAGS.flags_by_module_dict().get(module, [])):
      delattr(flags.FLAGS, flag.name)
    sys.modules.pop(module, None)
  flags.FLAGS.unparse_flags()
  try:
    main.main(["mmar-jax", *args])
    code = 0
  except SystemExit as e:
    code = e.code or 0
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny run's workdir holding the checkpoint of step 30: trained enough that the diffusion head's
  zero-initialised modulation and output layers have moved, so guidance shows in the pixels."""
  path = str(tmp_path_factory.mktemp("run"))
  loop.train(tiny.config("train.num_steps=30", "train.checkpoint_every=30"), path, resume=False)
  return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """Two synthetic-shapes PNGs (one not square, so that it is cropped) and a file that is no image."""
  root = tmp_path_factory.mktemp("images")
  cfg = synthetic.SyntheticConfig(num_records=2, image_size=48, seed=5, noisy_backgrounds=False)
  Image.fromarray(synthetic.sample(cfg, 0)["image"]).save(root / "a.png")
  Image.fromarray(synthetic.sample(cfg, 1)["image"][:, :40]).save(root / "b.png")
  (root / "broken.png").write_bytes(b"\x89PNG not really")
  return root


def test_help_shows_the_subcommands_docstring_and_flags(capsys):
  for command, flag in (("generate", "--prompts-file"), ("describe", "--top-p")):
    code, out, _ = mmar_jax(capsys, command, "--help")
    assert code == 0 and out.startswith(f"mmar-jax {command}:") and flag in out


def test_generate_is_deterministic_for_a_seed_and_writes_each_image(capsys, tmp_path, workdir):
  prompts = ("--prompt=a red circle at the left", "--prompt=a small blue square")
  runs = {}
  for name, seed in (("first", 3), ("again", 3), ("other", 4)):
    out = tmp_path / name / "grid.png"
    code, stdout, err = mmar_jax(capsys, "generate", f"--ckpt={workdir}", *prompts, *FAST, f"--seed={seed}",
                                 f"--out={out}")
    assert code == 0, err
    assert "6 images: 2 captions x 3" in stdout
    runs[name] = [out.read_bytes()] + [(out.parent / f"grid_{i}.png").read_bytes() for i in range(6)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"] + [f"grid_{i}.png" for i in range(6)]
  assert runs["first"] == runs["again"]
  assert runs["first"][0] != runs["other"][0]
  grid = np.asarray(Image.open(tmp_path / "first" / "grid.png"))
  single = np.asarray(Image.open(tmp_path / "first" / "grid_0.png"))
  assert single.shape == (24, 24, 3) and single.dtype == np.uint8
  assert grid.shape[0] == 2 * (24 * 5 + 40)  # One row a caption: 24-pixel images at 5x, 40 pixels of caption.


def test_each_sampling_flag_changes_the_images(capsys, tmp_path, workdir):
  """--cfg, --temperature, --steps and --sampling-steps reach the sampler: with the seed fixed, the
  defaults drawn twice give the same bytes, and each flag alone changes pixels (FAST has steps 3
  and sampling-steps 5; cfg 3 and temperature 1 by default). Guidance moves them least on a model
  this little trained (measured: at most 2 levels at step 30, none visible at step 1)."""
  def pixels(name: str, *extra: str) -> np.ndarray:
    out = tmp_path / name / "g.png"
    code, _, err = mmar_jax(capsys, "generate", f"--ckpt={workdir}", "--prompt=a red circle at the left", *FAST,
                            "--seed=3", f"--out={out}", *extra)
    assert code == 0, err
    return np.stack([np.asarray(Image.open(out.parent / f"g_{i}.png")) for i in range(3)]).astype(int)

  default = pixels("default")
  np.testing.assert_array_equal(pixels("again"), default)
  for flag in ("--cfg=1.0", "--temperature=0.5", "--steps=2", "--sampling-steps=8"):
    changed = np.abs(pixels(flag.strip("-").split("=")[0], flag) - default)
    assert changed.max() > 0, flag


def test_generate_reads_a_prompts_file_and_a_step_directory(capsys, tmp_path, workdir):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle at the left\n\n  a small blue square \n")
  code, stdout, err = mmar_jax(capsys, "generate", f"--ckpt={workdir}/checkpoints/30", f"--prompts-file={prompts}",
                               *FAST, f"--out={tmp_path / 'g.png'}")
  assert code == 0, err
  assert "2 captions x 3" in stdout and "step 30" in stdout


def test_describe_answers_one_image_as_decoding_without_the_cache(capsys, workdir, images):
  # Sampled, not greedy: at step 30 the greedy answer is <boi> over and over, which prints as ''.
  # The raw weights: at step 30 the demo's EMA (0.99) is still mostly the init and answers ''.
  code, out, err = mmar_jax(capsys, "describe", f"--ckpt={workdir}", "--weights=raw", f"--image={images / 'b.png'}",
                            "--question=what colour is the circle?", "--max-new-tokens=6", "--temperature=1.0",
                            "--top-p=0.9", "--seed=0")
  assert code == 0, err
  # The reference: the same checkpoint in this process, each token drawn (describe's sampler, its
  # keys: fold_in(fold_in(key(seed), batch 0), step)) from the logits of a full forward pass over the
  # sequence so far, no KV cache; cut at <|im_end|>.
  trained = checkpoint_arg.load(workdir, None, weights="raw")
  exp = trained.exp
  pixels = images_lib.load_image(str(images / "b.png"), images_lib.ImageConfig.from_config(exp.config)).pixels
  tokens = exp.image_tokenizer.encode(trained.tokenizer_params, pixels[None].astype(np.float32) / 127.5 - 1.0)
  question = exp.text_tokenizer.encode("what colour is the circle?", add_special_tokens=False).ids
  rng = jax.random.fold_in(jax.random.key(0), 0)
  row = test_describe.full_recompute_greedy(
      exp.model, as_variables(trained.params)["params"], np.asarray(tokens), [question], 6, exp.special_ids,
      pick=lambda logits, j: describe.sample_logits(jax.random.fold_in(rng, j), logits, 1.0, 0.9))[0]
  expected = exp.text_tokenizer.decode(test_describe.cut(row, exp.special_ids.im_end), skip_special_tokens=True)
  # Words, so that the comparison says something (measured: 'large shape the'). At step 30 the
  # answer hardly depends on the image or the question (the same for any question asked), so what
  # this pins is the command's sampling and text path: seed, keys, temperature, top-p, the cut and
  # the decode (a key not folded per batch gives 'two bottom'). That the cache reproduces the full
  # recompute on a model whose answers depend on their input, tests/infer/test_describe.py shows.
  assert expected.strip()
  assert out == expected.strip() + "\n"


def test_describe_jsonl_writes_an_answer_on_every_line_and_keeps_the_other_keys(capsys, tmp_path, workdir, images):
  lines = [{"image": "a.png", "question": "what shape is at the top?", "id": 7},
           {"image": "b.png"},
           {"image": str(images / "a.png"), "question": "how many shapes are there?", "meta": {"k": [1, 2]}}]
  (images / "in.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
  out = tmp_path / "answers.jsonl"
  code, stdout, err = mmar_jax(capsys, "describe", f"--ckpt={workdir}", f"--jsonl={images / 'in.jsonl'}",
                               f"--out={out}", "--batch-size=2", "--max-new-tokens=4", "--temperature=0.7",
                               "--top-p=0.9")
  assert code == 0, err
  assert "3 answers" in stdout
  written = [json.loads(line) for line in out.read_text().splitlines()]
  assert [{k: v for k, v in w.items() if k != "answer"} for w in written] == lines
  assert all(isinstance(w["answer"], str) for w in written)


def errors(tmp_path, workdir, images) -> list[tuple[list[str], str]]:
  """(arguments, what the message must say): each a mistake the commands name."""
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  (tmp_path / "blank.txt").write_text("\n  \n")
  (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n{"image": \n')
  (tmp_path / "keyless.jsonl").write_text('{"question": "what?"}\n')
  (tmp_path / "missing.jsonl").write_text('\n{"image": "nope.png"}\n')
  (tmp_path / "broken.jsonl").write_text(f'{{"image": "{images / "a.png"}"}}\n{{"image": "{images / "broken.png"}"}}\n')
  gen = ["generate", f"--ckpt={workdir}", "--prompt=a red circle", f"--out={tmp_path / 'g.png'}"]
  ask = ["describe", f"--ckpt={workdir}", f"--image={images / 'a.png'}"]
  return [
      (["generate", "--prompt=a", f"--out={tmp_path / 'g.png'}"], "--ckpt is required"),
      (["generate", f"--ckpt={tmp_path / 'nope'}", "--prompt=a", f"--out={tmp_path / 'g.png'}"], "nope does not exist"),
      (["generate", f"--ckpt={tmp_path / 'empty'}", "--prompt=a", f"--out={tmp_path / 'g.png'}"],
       "holds no checkpoint"),
      (gen[:1] + [f"--ckpt={workdir}/checkpoints/9"] + gen[2:], "holds no step 9 (it holds steps [30])"),
      (gen[:1] + [f"--ckpt={workdir}/checkpoints/30", "--step=2"] + gen[2:], "is step 30 but --step=2"),
      ([*gen[:2], f"--out={tmp_path / 'g.png'}"], "give --prompt"),
      ([*gen[:2], f"--prompts-file={tmp_path / 'blank.txt'}", f"--out={tmp_path / 'g.png'}"], "holds no captions"),
      ([*gen, "--cfg=0"], "--cfg=0.0 must be positive"),
      ([*gen, "--steps=0"], "--steps=0 must be at least 1"),
      ([*gen, "--num-images=0"], "--num-images=0 must be at least 1"),
      ([*gen[:3], f"--out={tmp_path / 'g.jpg'}"], "must end in .png"),
      ([*gen[:2], "--prompt=a red zebra", f"--out={tmp_path / 'g.png'}"], "--prompt='a red zebra': the tokenizer "
       "does not know the words ['zebra']"),
      ([*gen[:2], "--prompt=a <boi> circle", f"--out={tmp_path / 'g.png'}"], "holds the special tokens ['<boi>']"),
      ([*gen[:2], "--prompt=" + "red " * 600, f"--out={tmp_path / 'g.png'}"],
       "600 caption tokens + 2 special + 9 image tokens = 611 exceed the model's context "
       "config.model.max_seq_len=512"),
      ([*ask, "--top-p=0"], "--top-p=0.0 must be in (0, 1]"),
      ([*ask, "--top-p=1.5"], "--top-p=1.5 must be in (0, 1]"),
      ([*ask, "--temperature=-1"], "--temperature=-1.0 must be >= 0"),
      ([*ask, "--max-new-tokens=0"], "--max-new-tokens=0 must be at least 1"),
      ([*ask, "--question=" + "what " * 500], "500 question tokens + 9 image tokens + 2 special + "
       "--max-new-tokens=32 = 543 exceed the model's context config.model.max_seq_len=512"),
      ([*ask[:2], f"--image={images / 'nope.png'}"], "--image: image " + str(images / "nope.png") + " does not exist"),
      ([*ask[:2], f"--image={images / 'broken.png'}"], f"--image: {images / 'broken.png'} is not a readable image"),
      ([*ask[:2], f"--jsonl={tmp_path / 'bad.jsonl'}", f"--out={tmp_path / 'o.jsonl'}"], "bad.jsonl line 2: not JSON"),
      ([*ask[:2], f"--jsonl={tmp_path / 'keyless.jsonl'}", f"--out={tmp_path / 'o.jsonl'}"],
       'keyless.jsonl line 1: needs an "image" key'),
      ([*ask[:2], f"--jsonl={tmp_path / 'missing.jsonl'}", f"--out={tmp_path / 'o.jsonl'}"],
       "missing.jsonl line 2: image " + str(tmp_path / "nope.png") + " does not exist"),
      ([*ask[:2], f"--jsonl={tmp_path / 'broken.jsonl'}", f"--out={tmp_path / 'o.jsonl'}"],
       f"broken.jsonl line 2: {images / 'broken.png'} is not a readable image"),
      ([*ask[:2], f"--jsonl={tmp_path / 'bad.jsonl'}"], "needs --out"),
      (ask[:2], "give one of --image"),
  ]


def test_mistakes_exit_2_with_a_message_naming_them(capsys, tmp_path, workdir, images):
  for args, message in errors(tmp_path, workdir, images):
    code, out, err = mmar_jax(capsys, *args)
    assert code == 2, (args, out, err)
    assert f"mmar-jax {args[0]}: error:" in err and message in err, (args, err)
    assert "Traceback" not in err
  assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "g.png").exists()


def test_eval_vqa_scores_describes_answers_by_the_written_rules(capsys, tmp_path, workdir, images):
  # The predictions are describe's greedy answers; the references are chosen against them, so the
  # scores are known: the first record's single reference is its prediction (1), the second's is
  # not (0), the third has 10 annotators of whom 2 gave the prediction (0.6, VQAv2's leave-one-out).
  questions = [("a.png", "what colour is the circle?"), ("b.png", "what shape is the circle?"), ("a.png", "how big is the circle?")]
  asked = tmp_path / "asked.jsonl"
  asked.write_text("".join(json.dumps({"image": str(images / i), "question": q}) + "\n" for i, q in questions))
  code, _, err = mmar_jax(capsys, "describe", f"--ckpt={workdir}", f"--jsonl={asked}", f"--out={tmp_path / 'a.jsonl'}",
                          "--max-new-tokens=16")
  assert code == 0, err
  said = [json.loads(line)["answer"] for line in (tmp_path / "a.jsonl").read_text().splitlines()]
  records = [{"image": str(images / questions[0][0]), "question": questions[0][1], "answer": said[0], "category": "c1"},
             {"image": str(images / questions[1][0]), "question": questions[1][1], "answer": said[1] + " zebra",
              "category": "c1"},
             {"image": str(images / questions[2][0]), "question": questions[2][1],
              "answer": [said[2]] * 2 + ["zebra"] * 8, "category": "c2"}]
  data = tmp_path / "vqa.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in records))
  code, out, err = mmar_jax(capsys, "eval-vqa", f"--ckpt={workdir}", f"--data={data}", f"--out={tmp_path / 'p.jsonl'}",
                            "--json")
  assert code == 0, err
  predicted = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
  assert [p["prediction"] for p in predicted] == said
  assert [p["score"] for p in predicted] == pytest.approx([1.0, 0.0, 0.6])
  figures = json.loads(out.strip().splitlines()[-1])
  assert figures["accuracy"] == pytest.approx(1.6 / 3) and figures["records"] == 3
  assert figures["categories"] == {"c1": {"accuracy": 0.5, "records": 2}, "c2": {"accuracy": pytest.approx(0.6),
                                                                                 "records": 1}}
  assert re.search(r"^c1 +50\.0% +2$", out, re.M) and re.search(r"^overall +53\.3% +3$", out, re.M), out

  data.write_text('{"image": "a.png", "question": "q?"}\n')
  code, _, err = mmar_jax(capsys, "eval-vqa", f"--ckpt={workdir}", f"--data={data}")
  assert code == 2 and err.strip().splitlines()[-1] == (
      f'mmar-jax eval-vqa: error: --data={data} line 1: "answer" must be a string or a non-empty list of strings')
