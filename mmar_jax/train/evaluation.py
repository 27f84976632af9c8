"""Evaluation on fixed sets: generate images from captions, answer questions about images.

Two sets of synthetic shapes, the same N records at every step and in every run, each drawn with
a seed no training record uses (`HELD_OUT_SEED_OFFSET` past config.data.seed):
- 'unseen': every shape is a (colour, shape, position) triple the training stream never holds
  (config.data.synthetic_held_out_modulus, data/synthetic.py), so no caption, image or
  question-answer placement of it was trained on: this measures generalisation to new
  combinations;
- 'seen': only triples training holds, in new records (a caption may still equal a training
  one: the grammar is small), so the gap to 'unseen' shows what memorised combinations are worth.
With the modulus 0 nothing is held out and only 'seen' is drawn.

Each generated image is judged from its pixels by the dataset's own labels
(`synthetic_judge.score`: colour, shape, position, size of every shape); each answer is compared
with the record's answer word for word. The generated set as a whole is compared with the set's
drawn images by a Fréchet distance in the judge's feature space (`synthetic_judge.features`,
through the same eval/frechet.py as FID). It is 0 when every shape is drawn where and as its
caption says (the features do not see the background); beside it, the distance of a second,
independent drawn set of the same kind and size: the sampling noise of the statistic at this
size, what images of exactly the data's distribution that ignore the pairing with captions score.
Results go to TensorBoard (scalars, the image grid, a text table, under eval/<set>/), to
`eval/step_<k>_<set>.png` and `eval/step_<k>.json` (both sets) under the workdir.

Other data sources have no labels to judge by, so the loop does not run this hook on them
(loop.default_eval_fn says so in one line); their evaluation is the validation loss and
train/held_out_eval.py on held-out records (config.data.validation_fraction).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from mmar_jax import checkpoint
from mmar_jax.data import synthetic, synthetic_judge
from mmar_jax.eval import frechet
from mmar_jax.infer import describe, generate_image, image_io
from mmar_jax.train import experiment, metrics

HELD_OUT_SEED_OFFSET = 1_000_003  # Training draws (seed, index) with this seed (or the next) never.
MAX_ANSWER_TOKENS = 32
TITLES = {"unseen": "unseen combinations (never trained on)", "seen": "seen combinations (new records)"}


def evaluation_sets(config, count: int, draw: int = 0) -> dict[str, list[dict]]:
  """`count` records of each evaluation set: {'unseen': ..., 'seen': ...} ('seen' only when
  config.data.synthetic_held_out_modulus is 0). `draw` 1 gives independent sets of the same kinds
  (the Fréchet distance's reference)."""
  modulus = config.data.synthetic_held_out_modulus

  def draw_set(held_out: bool, offset: int) -> list[dict]:
    cfg = synthetic.SyntheticConfig(num_records=count, image_size=config.tokenizer.image_size,
                                    seed=config.data.seed + offset,
                                    noisy_backgrounds=config.data.synthetic_noisy_backgrounds,
                                    held_out_modulus=modulus, held_out=held_out)
    return [synthetic.sample(cfg, i) for i in range(count)]

  sets = {"unseen": draw_set(True, HELD_OUT_SEED_OFFSET + 2 * draw)} if modulus else {}
  sets["seen"] = draw_set(False, HELD_OUT_SEED_OFFSET + 1 + 2 * draw)
  return sets


def padded(items: list) -> list:
  """`items` with its last repeated up to a multiple of the device count: inside the training mesh
  the prompts' batch is split over the data axes, which must divide it (the extra rows are dropped)."""
  return items + items[-1:] * (-len(items) % jax.device_count())


def prompt_ids(exp: experiment.Experiment, text: str) -> list[int]:
  return exp.text_tokenizer.encode(text, add_special_tokens=False).ids


def evaluate(exp: experiment.Experiment, params: Any, records: list[dict], *, seed: int = 0,
             tokenizer_params: Any = None, reference_records: list[dict] | None = None) -> dict[str, Any]:
  """Generates one image per record caption and answers one question per record.

  `reference_records`: an independent draw of the same kind (`evaluation_sets(..., draw=1)`) for the
  Fréchet distance's reference (a second drawn set's distance); without them it is not reported.

  Returns {'generation': per-record judge scores and the images, 'understanding': per-record
  question, answer, expected, correct, and 'summary': the means}.
  """
  config = exp.config
  tokenizer_params = exp.image_tokenizer_params() if tokenizer_params is None else tokenizer_params
  rng = jax.random.key(seed)
  gen_rng, answer_rng = jax.random.split(rng)
  captions = [r["caption"] for r in records]
  tokens = generate_image.generate(exp.model, params, padded([prompt_ids(exp, c) for c in captions]),
                                   exp.special_ids, gen_rng, **generate_image.generation_settings(config))
  images = image_io.to_uint8(jax.device_get(exp.image_tokenizer.decode(tokenizer_params, tokens)))[:len(records)]
  judged = [synthetic_judge.score(image, r["labels"]) for image, r in zip(images, records)]

  # One question per record, cycling through the kinds so that every kind is asked.
  questions = [r["qa"][i % len(r["qa"])] for i, r in enumerate(records)]
  pixels = np.stack(padded([r["image"] for r in records])).astype(np.float32) / 127.5 - 1.0
  image_tokens = exp.image_tokenizer.encode(tokenizer_params, pixels)
  answers = describe.describe(exp.model, params, image_tokens, padded([prompt_ids(exp, q) for q, _ in questions]),
                              exp.special_ids, max_new_tokens=MAX_ANSWER_TOKENS, rng=answer_rng)[:len(records)]
  understanding = []
  for (question, expected), answer_ids in zip(questions, answers):
    answer = exp.text_tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
    understanding.append({"question": question, "expected": expected, "answer": answer,
                          "correct": same_words(answer, expected)})
  summary = {f"generation/{k}": float(np.mean([j[k] for j in judged])) for k in judged[0]}
  # Chance: each image judged against another record's labels, so a model that ignores its
  # caption (or draws typical-looking shapes) scores this much.
  mismatched = [synthetic_judge.score(image, records[(i + 1) % len(records)]["labels"])
                for i, image in enumerate(images)]
  summary.update({f"generation/{k}_chance": float(np.mean([j[k] for j in mismatched])) for k in judged[0]})
  drawn = _feature_stats([r["image"] for r in records])
  summary["generation/frechet"] = frechet.frechet_distance(_feature_stats(images), drawn)
  if reference_records is not None:
    summary["generation/frechet_reference"] = frechet.frechet_distance(
        _feature_stats([r["image"] for r in reference_records]), drawn)
  summary["understanding/accuracy"] = float(np.mean([u["correct"] for u in understanding]))
  summary["understanding/majority_baseline"] = _majority_baseline(understanding)
  return {"generation": [dict(caption=c, **j) for c, j in zip(captions, judged)], "images": images,
          "understanding": understanding, "summary": summary}


def _feature_stats(images) -> frechet.FeatureStats:
  return frechet.FeatureStats.from_features(np.stack([synthetic_judge.features(i) for i in images]))


def _question_kind(question: str) -> str:
  return " ".join(question.split()[:2])


def _majority_baseline(understanding: list[dict]) -> float:
  """Accuracy of always giving the most common expected answer of each question kind."""
  by_kind: dict[str, list[str]] = {}
  for u in understanding:
    by_kind.setdefault(_question_kind(u["question"]), []).append(_normalise(u["expected"]))
  hits = sum(max(answers.count(a) for a in set(answers)) for answers in by_kind.values())
  return hits / len(understanding)


def same_words(answer: str, expected: str) -> bool:
  """Whether two answers have the same words, case and question marks and full stops aside."""
  return _normalise(answer) == _normalise(expected)


def _normalise(text: str) -> str:
  # The demo tokenizer splits punctuation off words and decodes with spaces: compare words only.
  return " ".join(text.replace("?", " ").replace(".", " ").split()).lower()


def write_json(path: str, value: Any) -> None:
  """`value` as indented JSON at `path` (any epath filesystem)."""
  path = checkpoint.path_of(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value, indent=1))


def table(result: dict[str, Any], name: str) -> str:
  """A plain-text report of set `name`: generation correctness and answer accuracy, each beside
  its chance level."""
  s = result["summary"]
  lines = [f"{TITLES[name]:<40}{'model':>8}{'chance':>8}", "generated images, judged from pixels:"]
  for key in ("colour", "shape", "position", "size", "all", "count"):
    lines.append(f"  {key:<38}{s[f'generation/{key}']:>8.1%}{s[f'generation/{key}_chance']:>8.1%}")
  if "generation/frechet_reference" in s:
    lines.append(f"  {'frechet distance (judge features)':<38}{s['generation/frechet']:>8.3f}"
                 f"{s['generation/frechet_reference']:>8.3f}")
  lines.append(f"{'questions answered exactly':<40}{s['understanding/accuracy']:>8.1%}"
               f"{s['understanding/majority_baseline']:>8.1%}")
  by_kind: dict[str, list[bool]] = {}
  for u in result["understanding"]:
    by_kind.setdefault(_question_kind(u["question"]), []).append(u["correct"])
  for kind, hits in sorted(by_kind.items()):
    lines.append(f"  {kind + ' ...':<38}{np.mean(hits):>8.1%}  ({sum(hits)}/{len(hits)})")
  return "\n".join(lines)


CHANCE_NOTE = ("chance: images judged against another caption's labels; answers: the most common answer of "
               "each question kind; Fréchet distance (lower is better): a second drawn set's, the statistic's "
               "sampling noise")


def write_results(path: str, sets: dict[str, list[dict]], results: dict[str, dict], grid_size: int | None = None):
  """`<path>_<set>.png` (the first `grid_size` prompts and images of each set, all when None) and
  `<path>.json` ({set: scores and answers}); returns each set's grid image (HWC uint8)."""
  grids = {name: image_io.grid_png(results[name]["images"][:grid_size],
                                   [r["caption"] for r in records[:grid_size]], f"{path}_{name}.png")
           for name, records in sets.items()}
  write_json(f"{path}.json", {name: {k: v for k, v in result.items() if k != "images"}
                              for name, result in results.items()})
  return grids


def make_hook(config, workdir: str):
  """The loop's periodic hook: evaluate on config.train.eval_samples records of each set and log."""
  sets = evaluation_sets(config, config.train.eval_samples)
  references = evaluation_sets(config, config.train.eval_samples, draw=1)

  def hook(exp: experiment.Experiment, params: Any, step: int) -> None:
    results = {name: evaluate(exp, params, records, seed=config.seed, reference_records=references[name])
               for name, records in sets.items()}
    if jax.process_index() != 0:
      return
    grids = write_results(str(checkpoint.path_of(workdir) / "eval" / f"step_{step}"), sets, results)
    # A writer per evaluation, closed at its end: one left open for the run lost the last
    # evaluation's final event (nothing closed it at exit).
    writer = metrics.Writer(metrics.logdir(workdir))
    try:
      for name, result in results.items():
        writer.scalars(step, {f"eval/{name}/{k}": v for k, v in result["summary"].items()})
        writer.images(step, f"eval/{name}/generated", grids[name])
        writer.text(step, f"eval/{name}/answers", "\n\n".join(
            f"{u['question']} -> {u['answer']} (expected {u['expected']})" for u in result["understanding"]))
    finally:
      writer.close()

  return hook
