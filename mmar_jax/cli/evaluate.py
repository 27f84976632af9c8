"""mmar-jax evaluate: a training run's evaluation (generated images judged, questions scored).

Prints one table for the unseen combinations and one for the seen (train/evaluation.py says which
is which), writes `eval/final_step_<k>_{unseen,seen}.png` (prompts and generated images) and
`eval/final_step_<k>.json` (both sets) in the workdir.
"""

from __future__ import annotations

from absl import flags

from mmar_jax import checkpoint
from mmar_jax.infer import image_io
from mmar_jax.train import evaluation, experiment

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
  sets = evaluation.evaluation_sets(config, _SAMPLES.value)
  print(f"evaluating step {step} of {_WORKDIR.value} on {_SAMPLES.value} synthetic records of each set "
        f"({', '.join(sets)}) ...", flush=True)
  results = {name: evaluation.evaluate(exp, params, records, seed=_SEED.value) for name, records in sets.items()}
  path = checkpoint.locate(_WORKDIR.value).root / "eval" / f"final_step_{step}"
  evaluation.write_results(str(path), sets, results, grid_size=16)
  for name, result in results.items():
    print(evaluation.table(result, name))
  print(evaluation.CHANCE_NOTE)
  print(f"wrote {path}_{{{','.join(sets)}}}.png (prompts and generated images) and {path}.json")
