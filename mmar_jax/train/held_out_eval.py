"""Evaluation on the user's own data: held-out captions drawn, held-out questions answered.

For data other than the synthetic shapes there are no labels to judge pixels by, so the
evaluation shows what a person judges: the first `config.train.eval_samples` decodable records of
the validation split (data.validation_fraction, the records training never reads), each caption's
generated image beside the record's own image (a cached record's: its VAE-decoded posterior
mean), and the model's answer to each record's first question beside the reference answer. The
validation loss on the same split is logged by the loop. Written as `eval/step_<k>_held_out.png`
(reference, generated, pair by pair), `eval/step_<k>_held_out.json` and TensorBoard (image grid
and answers text under eval/held_out/).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import tqdm
from jax.typing import ArrayLike

from mmar_jax import checkpoint
from mmar_jax.data import decode, holdout, latent_source, pipeline
from mmar_jax.infer import describe, generate_image, image_io
from mmar_jax.train import evaluation, experiment, metrics


def held_out_records(config, count: int) -> list[dict]:
  """The first `count` decodable validation records, over the sources in order (corrupt ones skipped)."""
  pc = pipeline.PipelineConfig.from_config(config)
  found: list[dict] = []
  for source, _ in pipeline.make_sources(pc):
    held = holdout.split(source, pc.validation_fraction)[1]
    for i in range(len(held)):
      if len(found) == count:
        return found
      element = held[i]
      record = latent_source.decode_record(element) if "data" in element else decode.decode_record(element, pc.image)
      if "corrupt" not in record:
        found.append(record)
  return found


def _image_tokens(exp: experiment.Experiment, tokenizer_params: Any, records: list[dict]) -> ArrayLike:
  """The records' image tokens, padded (evaluation.padded): a cached record's posterior mean."""
  if "moments" in records[0]:
    return exp.image_tokenizer.tokens_from_moments(np.stack(evaluation.padded([r["moments"] for r in records])))
  pixels = np.stack(evaluation.padded([r["image"] for r in records])).astype(np.float32) / 127.5 - 1.0
  return exp.image_tokenizer.encode(tokenizer_params, pixels)


def _reference_images(exp: experiment.Experiment, tokenizer_params: Any, records: list[dict]) -> np.ndarray:
  if "moments" in records[0]:
    pixels = exp.image_tokenizer.decode(tokenizer_params, _image_tokens(exp, tokenizer_params, records))
    return image_io.to_uint8(jax.device_get(pixels))[:len(records)]
  return np.stack([r["image"] for r in records])


def evaluate(exp: experiment.Experiment, params: Any, records: list[dict], *, seed: int = 0) -> dict[str, Any]:
  """{'references', 'images' (one per captioned record), 'captions', 'understanding' (question,
  expected, answer, exact), 'summary'}."""
  tokenizer_params = exp.image_tokenizer_params()
  gen_rng, answer_rng = jax.random.split(jax.random.key(seed))
  captioned = [r for r in records if r["caption"]]
  result: dict[str, Any] = {"captions": [r["caption"] for r in captioned], "understanding": [], "summary": {}}
  if captioned:
    ids = evaluation.padded([evaluation.prompt_ids(exp, r["caption"]) for r in captioned])
    tokens = generate_image.generate(exp.model, params, ids, exp.special_ids, gen_rng,
                                     **generate_image.generation_settings(exp.config))
    pixels = jax.device_get(exp.image_tokenizer.decode(tokenizer_params, tokens))[:len(captioned)]
    result["images"] = image_io.to_uint8(pixels)
    result["references"] = _reference_images(exp, tokenizer_params, captioned)
  asked = [r for r in records if r["qa"]]
  if asked:
    image_tokens = _image_tokens(exp, tokenizer_params, asked)
    questions = [r["qa"][0] for r in asked]
    answers = describe.describe(exp.model, params, image_tokens,
                                evaluation.padded([evaluation.prompt_ids(exp, q) for q, _ in questions]),
                                exp.special_ids, max_new_tokens=evaluation.MAX_ANSWER_TOKENS,
                                rng=answer_rng)[:len(asked)]
    for (question, expected), answer_ids in zip(questions, answers):
      answer = exp.text_tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
      result["understanding"].append({"question": question, "expected": expected, "answer": answer,
                                      "exact": evaluation.same_words(answer, expected)})
    result["summary"]["understanding/exact"] = float(np.mean([u["exact"] for u in result["understanding"]]))
  return result


def write_results(path: str, result: dict[str, Any]) -> np.ndarray | None:
  """`<path>.png` (reference and generated image of each caption, side by side) and `<path>.json`;
  returns the grid (HWC uint8), None when no record has a caption."""
  evaluation.write_json(f"{path}.json", {k: v for k, v in result.items() if k not in ("images", "references")})
  if "images" not in result:
    return None
  pairs = np.stack([im for pair in zip(result["references"], result["images"]) for im in pair])
  labels = [label for c in result["captions"] for label in (f"reference: {c}", "generated")]
  # Down to the demo's 4x for small images; real ones are shown at their size.
  scale = max(1, 96 // pairs.shape[1])
  return image_io.grid_png(pairs, labels, f"{path}.png", scale=scale, columns=4)


def lines(result: dict[str, Any]) -> list[str]:
  """A short console report: what was written, and each question with both answers."""
  out = [f"held-out records: {len(result['captions'])} captions drawn, {len(result['understanding'])} questions "
         "answered" + (f" ({result['summary']['understanding/exact']:.1%} word for word)" if result["understanding"]
                       else "")]
  out += [f"  {u['question']} -> {u['answer']!r} (reference {u['expected']!r})" for u in result["understanding"]]
  return out


def make_hook(config, workdir: str):
  """The loop's periodic hook on non-synthetic data; None when nothing is held out."""
  if not config.data.validation_fraction:
    return None
  records = held_out_records(config, config.train.eval_samples)
  if not records:
    return None

  def hook(exp: experiment.Experiment, params: Any, step: int) -> None:
    result = evaluate(exp, params, records, seed=config.seed)
    if jax.process_index() != 0:
      return
    grid = write_results(str(checkpoint.path_of(workdir) / "eval" / f"step_{step}_held_out"), result)
    writer = metrics.Writer(metrics.logdir(workdir))
    try:
      writer.scalars(step, {f"eval/held_out/{k}": v for k, v in result["summary"].items()})
      if grid is not None:
        writer.images(step, "eval/held_out/generated", grid)
      writer.text(step, "eval/held_out/answers", "\n\n".join(
          f"{u['question']} -> {u['answer']} (reference {u['expected']})" for u in result["understanding"]))
    finally:
      writer.close()
    tqdm.tqdm.write("\n".join(lines(result)))

  return hook
