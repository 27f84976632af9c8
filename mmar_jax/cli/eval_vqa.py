"""mmar-jax eval-vqa: score a checkpoint's answers on a visual question answering set.

    mmar-jax eval-vqa --ckpt=runs/demo --data=vqa.jsonl [--out=predictions.jsonl] [--json]

--data is JSONL, one question a line (blank lines skipped; image paths relative to the file):
    {"image": "a.png", "question": "what colour is the circle?", "answer": "red" | ["red", ...],
     "options": {"A": "red", "B": "blue"} (optional: multiple choice), "category": "colour" (optional)}
Answers are greedy (describe's path). Short answers score by VQAv2's accuracy (10 human answers,
or exact match after VQAv2's normalisation for fewer); a line with options is asked with its
options listed and scores 1 when the option read from the answer (MMBench's rule) is the one
"answer" names (its letter, or its text). eval/vqa.py writes the rules down. Prints accuracy per
category and overall, and how many choice answers named no option; --out writes each line with
its "prediction" and "score"; --json adds the figures as one JSON line. With several processes
each answers a disjoint share of the lines and the sums are combined.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from mmar_jax import checkpoint
from mmar_jax.cli import checkpoint_arg
from mmar_jax.eval import vqa
from mmar_jax.infer import answering

_CKPT = flags.DEFINE_string("ckpt", None, "Training --workdir, its checkpoints/ directory, or checkpoints/<step>.",
                            required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest readable).")
_DATA = flags.DEFINE_string("data", None, "The JSONL set to score (see above).", required=True)
_OUT = flags.DEFINE_string("out", None, "JSONL to write, each line with its prediction and score.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max-new-tokens", 16, "Longest answer, in tokens.")
_BATCH_SIZE = flags.DEFINE_integer("batch-size", 16, "Images a describe call.")
_INSTRUCTION = flags.DEFINE_string("choice-instruction", "Answer with the option's letter from the given choices "
                                   "directly.", "Line after a choice question's options (LLaVA's for MMBench); "
                                   "'' for none.")
_JSON = flags.DEFINE_bool("json", False, "Also print the figures as one JSON line (last).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Text tokenizer instead of the checkpoint's.")
_VAE = flags.DEFINE_string("vae", None, "VAE weights (kl16 tokenizer) instead of the path the checkpoint stores.")
_WEIGHTS = flags.DEFINE_enum("weights", None, list(checkpoint.WEIGHTS), checkpoint.WEIGHTS_HELP)


def read_set(path: str) -> list[answering.Request]:
  """The set's lines as requests (their question with any options), each line checked."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--data={path} does not exist")
  root = os.path.dirname(os.path.abspath(path))
  requests = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"--data={path} line {n}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object")
      for key in ("image", "question"):
        if not isinstance(record.get(key), str):
          raise ValueError(f'{where}: needs "{key}" as a string')
      answer = record.get("answer")
      if not (isinstance(answer, str) or (isinstance(answer, list) and answer
                                          and all(isinstance(a, str) for a in answer))):
        raise ValueError(f'{where}: "answer" must be a string or a non-empty list of strings')
      question = record["question"]
      options = record.get("options")
      if options is not None:
        if not isinstance(options, dict) or not options or not all(isinstance(v, str) for v in options.values()):
          raise ValueError(f'{where}: "options" must be a non-empty object of letter: text')
        if _correct_letter(record) is None:
          raise ValueError(f'{where}: "answer" {answer!r} is neither a letter nor the text of one of the options '
                           f"{sorted(options)}")
        question = vqa.choice_prompt(question, options, _INSTRUCTION.value)
      requests.append(answering.Request(where, os.path.join(root, record["image"]), question, record))
  if not requests:
    raise ValueError(f"--data={path} holds no lines")
  return requests


def _correct_letter(record: dict) -> str | None:
  options, answer = record["options"], record["answer"]
  answer = answer if isinstance(answer, str) else answer[0]
  if answer in options:
    return answer
  return next((k for k, v in options.items() if v.strip().lower() == answer.strip().lower()), None)


def score(record: dict, prediction: str) -> tuple[float, bool]:
  """(score, whether a choice question's answer named no option)."""
  if record.get("options") is not None:
    picked = vqa.choice(prediction, record["options"])
    return float(picked == _correct_letter(record)), picked is None
  answers = record["answer"] if isinstance(record["answer"], list) else [record["answer"]]
  return vqa.vqa_accuracy(prediction, answers), False


def main(argv):
  del argv
  if _MAX_NEW_TOKENS.value < 1 or _BATCH_SIZE.value < 1:
    raise ValueError("--max-new-tokens and --batch-size must be at least 1")
  requests = read_set(_DATA.value)
  for r in requests:
    if not os.path.isfile(r.image):
      raise FileNotFoundError(f"{r.where}: image {r.image} does not exist")
  trained = checkpoint_arg.load(_CKPT.value, _STEP.value, tokenizer=_TOKENIZER.value, vae=_VAE.value,
                                weights=_WEIGHTS.value)
  question_ids = [answering.question_tokens(trained.exp, r, _MAX_NEW_TOKENS.value) for r in requests]
  mine = list(range(jax.process_index(), len(requests), jax.process_count()))
  predictions = answering.answer(trained, [requests[i] for i in mine], [question_ids[i] for i in mine],
                                 batch_size=_BATCH_SIZE.value, seed=0, progress=True,
                                 max_new_tokens=_MAX_NEW_TOKENS.value, temperature=0.0, top_p=1.0)
  rows = []
  for i, prediction in zip(mine, predictions):
    value, unmatched = score(requests[i].record, prediction)
    rows.append({**requests[i].record, "prediction": prediction, "score": value, "unmatched": unmatched})
  categories = sorted({str(r.record.get("category", "all")) for r in requests})
  # Per category: [score sum, count, unmatched], summed over processes.
  sums = np.zeros((len(categories), 3), np.float64)
  for row in rows:
    k = categories.index(str(row.get("category", "all")))
    sums[k] += (row["score"], 1, row["unmatched"])
  if jax.process_count() > 1:
    sums = multihost_utils.process_allgather(sums).sum(axis=0)
  if _OUT.value:
    out = _OUT.value if jax.process_count() == 1 else f"{_OUT.value}.process{jax.process_index()}"
    with open(out + ".partial", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(out + ".partial", out)
  if jax.process_index() != 0:
    return
  figures = {"step": trained.step, "records": int(sums[:, 1].sum()), "accuracy": float(sums[:, 0].sum() / sums[:, 1].sum()),
             "unmatched_choices": int(sums[:, 2].sum()),
             "categories": {c: {"accuracy": float(s / n), "records": int(n)} for c, (s, n, _) in zip(categories, sums)}}
  print(f"{'category':<32}{'accuracy':>9}{'records':>9}")
  for c, row in figures["categories"].items():
    print(f"{c:<32}{row['accuracy']:>9.1%}{row['records']:>9}")
  print(f"{'overall':<32}{figures['accuracy']:>9.1%}{figures['records']:>9}")
  print(f"choice answers naming no option: {figures['unmatched_choices']} (scored wrong); checkpoint step "
        f"{trained.step}" + (f"; predictions in {_OUT.value}" if _OUT.value else ""))
  if _JSON.value:
    print(json.dumps({"command": "eval-vqa"} | figures))
