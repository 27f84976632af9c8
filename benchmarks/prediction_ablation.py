"""The paper's v-against-eps ablation at demo scale: the demo config trained with each prediction
target (same seed, data and steps), then evaluated on the same held-out sets, side by side.

    python benchmarks/prediction_ablation.py [--workdir runs/ablation] [--samples 128] [--json]

Each training is `mmar-jax train --config=configs/demo.py --config.diffusion.prediction=P` with no
time limit and no periodic evaluation (neither changes what is trained), in WORKDIR/P; a rerun
resumes or reuses finished runs. On a quiet 2-core CPU each training takes ~6 minutes and each
evaluation of 2 x 128 records ~1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

PREDICTIONS = ("v", "eps", "x0")
ROWS = ("colour", "shape", "position", "size", "all", "count")


def run(*args: str) -> None:
  subprocess.run([sys.executable, "-m", "mmar_jax.cli.main", *args], check=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/ablation")
  parser.add_argument("--samples", type=int, default=128, help="records of each evaluation set")
  parser.add_argument("--predictions", default=",".join(PREDICTIONS))
  report.add_json_flag(parser)
  args = parser.parse_args()
  predictions = args.predictions.split(",")
  results = {}
  for p in predictions:
    workdir = os.path.join(args.workdir, p)
    run("train", "--config=configs/demo.py", f"--workdir={workdir}", f"--config.diffusion.prediction={p}",
        "--config.train.time_limit_s=0.0", "--config.train.eval_every=0")
    run("evaluate", f"--workdir={workdir}", f"--samples={args.samples}")
    steps = sorted(int(f.split("_")[2].split(".")[0]) for f in os.listdir(os.path.join(workdir, "eval"))
                   if f.startswith("final_step_") and f.endswith(".json"))
    with open(os.path.join(workdir, "eval", f"final_step_{steps[-1]}.json"), encoding="utf-8") as f:
      results[p] = {name: r["summary"] for name, r in json.load(f).items()}
  for name in results[predictions[0]]:
    print(f"\n{name} ({args.samples} records)".ljust(41) + "".join(f"{p:>9}" for p in predictions) + "  chance*")
    for key in ROWS:
      print(f"  {key:<38}" + "".join(f"{results[p][name][f'generation/{key}']:>9.1%}" for p in predictions)
            + f"{results[predictions[0]][name][f'generation/{key}_chance']:>9.1%}")
    print(f"  {'frechet distance (judge features)':<38}"
          + "".join(f"{results[p][name]['generation/frechet']:>9.3f}" for p in predictions)
          + f"{results[predictions[0]][name]['generation/frechet_reference']:>9.3f}  (second drawn set)")
    print(f"  {'questions answered exactly':<38}"
          + "".join(f"{results[p][name]['understanding/accuracy']:>9.1%}" for p in predictions)
          + f"{results[predictions[0]][name]['understanding/majority_baseline']:>9.1%}")
  print("\n* chance of the first prediction's images (each model's own is in its evaluate table); the Fréchet "
        "reference is a second drawn set's distance, the same for all")
  report.emit(args, "prediction_ablation", {"samples": args.samples, "results": results})


if __name__ == "__main__":
  main()
