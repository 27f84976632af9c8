"""mmar-jax evaluate: a training run's evaluation (generated images judged, questions scored).

On the synthetic shapes: one table for the unseen combinations and one for the seen
(train/evaluation.py says which is which), `eval/final_step_<k>_{unseen,seen}.png` (prompts and
generated images) and `eval/final_step_<k>.json` (both sets) in the workdir. On other data: the
held-out records' captions drawn beside their images and their questions answered beside the
references (train/held_out_eval.py), `eval/final_step_<k>_held_out.{png,json}`.
"""

from __future__ import annotations

from absl import flags

from mmar_jax import checkpoint
from mmar_jax.train import evaluation, experiment, held_out_eval

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/), or any checkpoint "
                               "load_params reads; eval/ is written beside its checkpoints/.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest readable).")
_SAMPLES = flags.DEFINE_integer("samples", 64, "Records of each set (unseen, seen) to generate and question.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Text tokenizer (a tokenizer.json or a directory holding it) "
                                 "instead of the checkpoint's (its workdir's copy, else the stored path).")
_VAE = flags.DEFINE_string("vae", None, "VAE weights (kl16 tokenizer) instead of the path the checkpoint stores.")

_WEIGHTS = flags.DEFINE_enum("weights", None, list(checkpoint.WEIGHTS), checkpoint.WEIGHTS_HELP)

def main(argv):
  del argv
  params, config, step = checkpoint.load_params(_WORKDIR.value, _STEP.value, tokenizer=_TOKENIZER.value,
                                                vae=_VAE.value, weights=_WEIGHTS.value)
  exp = experiment.build(config)
  path = checkpoint.locate(_WORKDIR.value).root / "eval" / f"final_step_{step}"
  if config.data.source != "synthetic":
    _evaluate_held_out(exp, params, config, step, str(path))
    return
  sets = evaluation.evaluation_sets(config, _SAMPLES.value)
  print(f"evaluating step {step} of {_WORKDIR.value} on {_SAMPLES.value} synthetic records of each set "
        f"({', '.join(sets)}) ...", flush=True)
  references = evaluation.evaluation_sets(config, _SAMPLES.value, draw=1)
  results = {name: evaluation.evaluate(exp, params, records, seed=_SEED.value, reference_records=references[name])
             for name, records in sets.items()}
  evaluation.write_results(str(path), sets, results, grid_size=16)
  for name, result in results.items():
    print(evaluation.table(result, name))
  print(evaluation.CHANCE_NOTE)
  print(f"wrote {path}_{{{','.join(sets)}}}.png (prompts and generated images) and {path}.json")


def _evaluate_held_out(exp, params, config, step: int, path: str) -> None:
  if not config.data.validation_fraction:
    raise ValueError(f"data.source={config.data.source!r} has no labels to judge by and the run held nothing out "
                     "(config.data.validation_fraction is 0): nothing to evaluate on")
  records = held_out_eval.held_out_records(config, _SAMPLES.value)
  print(f"evaluating step {step} of {_WORKDIR.value} on {len(records)} held-out records of data.source="
        f"{config.data.source!r} ...", flush=True)
  result = held_out_eval.evaluate(exp, params, records, seed=_SEED.value)
  held_out_eval.write_results(f"{path}_held_out", result)
  print("\n".join(held_out_eval.lines(result)))
  print(f"wrote {path}_held_out.png (references and generated images) and {path}_held_out.json")
