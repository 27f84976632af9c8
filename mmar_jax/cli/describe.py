"""mmar-jax describe: answer a question about an image (or caption it) with a trained checkpoint.

    mmar-jax describe --ckpt=runs/demo --image=shapes.png --question="what colour is the circle?"
    mmar-jax describe --ckpt=runs/demo --jsonl=questions.jsonl --out=answers.jsonl

--ckpt is a training --workdir, its checkpoints/ directory, or one step checkpoints/<k>.
--image prints the answer. --jsonl reads lines {"image": path, "question": optional, ...}
(relative paths resolve against the JSONL file's directory; blank lines are skipped) and writes
each to --out with an "answer" added and its other keys kept, --batch-size images at a time.
A line without a question takes --question; no question at all asks for a caption, as
training's caption records do. Images become pixels as training's input pipeline makes them
(data/images.py with the checkpoint's config.data image settings: upright by EXIF, transparency on
config.data.image_background, then config.data.image_resize, by default MAR's centre crop to
config.tokenizer.image_size), then scaled to [-1, 1].
--temperature 0 (the default) decodes greedily; above 0 it samples within the --top-p nucleus,
batch i from fold_in(key(seed), i).
"""

from __future__ import annotations

import json
import os

from absl import flags

from mmar_jax import checkpoint
from mmar_jax.cli import checkpoint_arg
from mmar_jax.infer import answering

_CKPT = flags.DEFINE_string("ckpt", None, "Training --workdir, its checkpoints/ directory, or checkpoints/<step>.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the one --ckpt names, else the newest "
                             "readable).")
_IMAGE = flags.DEFINE_string("image", None, "The image file to ask about.")
_QUESTION = flags.DEFINE_string("question", None, "The question (default: none, which asks for a caption); with "
                                "--jsonl, for the lines that have none.")
_JSONL = flags.DEFINE_string("jsonl", None, 'Batch mode: a JSONL file of {"image": path, "question": optional}.')
_OUT = flags.DEFINE_string("out", None, "With --jsonl: the JSONL file to write, each line with its answer.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max-new-tokens", 32, "Longest answer, in tokens.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy.")
_TOP_P = flags.DEFINE_float("top-p", 1.0, "Nucleus sampling: the most likely tokens holding this much probability.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Text tokenizer (a tokenizer.json or a directory holding it) "
                                 "instead of the checkpoint's (its workdir's copy, else the stored path).")
_VAE = flags.DEFINE_string("vae", None, "VAE weights (kl16 tokenizer) instead of the path the checkpoint stores.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (when --temperature > 0).")
_BATCH_SIZE = flags.DEFINE_integer("batch-size", 16, "Images a describe call in --jsonl mode.")


_WEIGHTS = flags.DEFINE_enum("weights", None, list(checkpoint.WEIGHTS), checkpoint.WEIGHTS_HELP)

def main(argv):
  del argv
  check_flags()
  if _IMAGE.value:
    requests = [answering.Request("--image", _IMAGE.value, _QUESTION.value or "", {})]
  else:
    requests = read_jsonl(_JSONL.value, _QUESTION.value or "")
  for r in requests:
    if not os.path.isfile(r.image):
      raise FileNotFoundError(f"{r.where}: image {r.image} does not exist")
  trained = checkpoint_arg.load(_CKPT.value, _STEP.value, tokenizer=_TOKENIZER.value, vae=_VAE.value,
                              weights=_WEIGHTS.value)
  question_ids = [answering.question_tokens(trained.exp, r, _MAX_NEW_TOKENS.value) for r in requests]
  answers = answering.answer(trained, requests, question_ids, batch_size=_BATCH_SIZE.value, seed=_SEED.value,
                   progress=not _IMAGE.value, max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
                   top_p=_TOP_P.value)
  if _IMAGE.value:
    print(answers[0])
    return
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  partial = _OUT.value + ".partial"  # Renamed when complete: --out is never half written.
  with open(partial, "w", encoding="utf-8") as f:
    for r, text in zip(requests, answers):
      f.write(json.dumps({**r.record, "answer": text}, ensure_ascii=False) + "\n")
  os.replace(partial, _OUT.value)
  print(f"wrote {_OUT.value}: {len(answers)} answers (checkpoint step {trained.step})")


def check_flags() -> None:
  """The flags' own checks, before anything loads."""
  if bool(_IMAGE.value) == bool(_JSONL.value):
    raise ValueError("give one of --image (one image, answer printed) and --jsonl with --out (batch mode)")
  if _JSONL.value and not _OUT.value:
    raise ValueError(f"--jsonl={_JSONL.value} needs --out, the JSONL file to write the answers to")
  if _IMAGE.value and _OUT.value:
    raise ValueError("--out is for --jsonl mode; --image prints its answer")
  if _MAX_NEW_TOKENS.value < 1:
    raise ValueError(f"--max-new-tokens={_MAX_NEW_TOKENS.value} must be at least 1")
  if _BATCH_SIZE.value < 1:
    raise ValueError(f"--batch-size={_BATCH_SIZE.value} must be at least 1")
  if _TEMPERATURE.value < 0:
    raise ValueError(f"--temperature={_TEMPERATURE.value} must be >= 0 (0 is greedy)")
  if not 0 < _TOP_P.value <= 1:
    raise ValueError(f"--top-p={_TOP_P.value} must be in (0, 1]")


def read_jsonl(path: str, default_question: str) -> list[answering.Request]:
  """The requests of a JSONL file, each line checked; image paths resolved against the file's directory."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--jsonl={path} does not exist")
  root = os.path.dirname(os.path.abspath(path))
  requests = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"--jsonl={path} line {n}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
      if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise ValueError(f'{where}: needs an "image" key holding the image\'s path, as {{"image": "a.png", '
                         '"question": "..."}')
      question = record.get("question", default_question)
      if not isinstance(question, str):
        raise ValueError(f'{where}: "question" must be a string, not {question!r}')
      requests.append(answering.Request(where, os.path.join(root, record["image"]), question, record))
  if not requests:
    raise ValueError(f"--jsonl={path} holds no lines")
  return requests
