"""mmar-jax evaluate: a training run's held-out evaluation (generated images judged, questions scored).

Prints the table, writes `eval/step_<k>.png` (prompts and generated images) and `.json` in the workdir.
"""

from __future__ import annotations

from absl import flags

from mmar_jax import checkpoint
from mmar_jax.infer import image_io
from mmar_jax.train import evaluation, experiment

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/), or any checkpoint "
                               "load_params reads; eval/ is written beside its checkpoints/.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest readable).")
_SAMPLES = flags.DEFINE_integer("samples", 64, "Held-out records to generate and question.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Text tokenizer (a tokenizer.json or a directory holding it) "
                                 "instead of the checkpoint's (its workdir's copy, else the stored path).")
_VAE = flags.DEFINE_string("vae", None, "VAE weights (kl16 tokenizer) instead of the path the checkpoint stores.")


def main(argv):
  del argv
  params, config, step = checkpoint.load_params(_WORKDIR.value, _STEP.value, tokenizer=_TOKENIZER.value,
                                                vae=_VAE.value)
  exp = experiment.build(config)
  records = evaluation.held_out_records(config, _SAMPLES.value)
  print(f"evaluating step {step} of {_WORKDIR.value} on {len(records)} held-out synthetic records ...", flush=True)
  result = evaluation.evaluate(exp, params, records, seed=_SEED.value)
  path = checkpoint.locate(_WORKDIR.value).root / "eval" / f"final_step_{step}"
  image_io.grid_png(result["images"][:16], [r["caption"] for r in records[:16]], f"{path}.png")
  evaluation.write_json(f"{path}.json", {k: v for k, v in result.items() if k != "images"})
  print(evaluation.table(result))
  print(f"wrote {path}.png (prompts and generated images) and {path}.json")
