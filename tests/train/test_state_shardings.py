"""Every large leaf of a paper preset's train state (parameters and Adam moments) is split over
FSDP: on the preset's real abstract tree (jax.eval_shape, nothing allocated), pure FSDP on the 8
test devices leaves no leaf over 1 MiB whole on a device."""

from __future__ import annotations

import math

import jax
import pytest

from mmar_jax import configs
from mmar_jax.data import text_tokenizer
from mmar_jax.models import tokenizers
from mmar_jax.models.mmar import MMAR, MMARConfig
from mmar_jax.train import experiment, loop
from mmar_jax.train import mesh as mesh_lib
from mmar_jax.train import state as state_lib

LARGE = 2**20  # Bytes: a leaf this big must not be replicated over FSDP.
DEVICES = 8
# Leaves over LARGE that cannot split 8 ways, with why (none today).
UNSPLITTABLE: dict[str, str] = {}


def preset_state(path: str):
  """The preset's abstract train state with the loop's optimizer, sharded over pure FSDP."""
  config = configs.load_config(path, ["mesh.data=1", f"mesh.fsdp={DEVICES}", "mesh.tensor=1"])
  # The experiment without its text tokenizer (no Qwen2 files needed): the special ids only pick
  # which embedding rows LoRA trains, so the vocabulary's last six serve.
  last = config.model.vocab_size - 1
  ids = text_tokenizer.SpecialIds(*range(last - 5, last + 1))
  exp = experiment.Experiment(config=config, text_tokenizer=None, special_ids=ids,
                              model=MMAR(MMARConfig.from_config(config, ids.mask)),
                              image_tokenizer=tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(config)))
  tx = loop.build_optimizer(exp, config)
  mesh = mesh_lib.make_mesh(config)
  shardings = state_lib.shardings(exp.init_params, tx, mesh, config.mesh.logical_axis_rules)
  return state_lib.abstract(exp.init_params, tx, config.seed, shardings)


def ways(leaf: jax.ShapeDtypeStruct) -> int:
  return math.prod(leaf.shape) // math.prod(leaf.sharding.shard_shape(leaf.shape))


@pytest.mark.parametrize("preset", ["configs/mmar_0p5b.py"])
def test_every_large_state_leaf_is_split_over_fsdp(preset):
  state = preset_state(preset)
  assert configs.load_config(preset, []).model.lora.rank > 0  # The LoRA factors are in the tree.
  large = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)
           if math.prod(leaf.shape) * leaf.dtype.itemsize > LARGE}
  assert any("lora_b" in name for name in large) and any("opt_state" in name for name in large)
  whole = {name: (leaf.shape, str(leaf.sharding.spec)) for name, leaf in large.items()
           if ways(leaf) < DEVICES and not any(key in name for key in UNSPLITTABLE)}
  assert not whole, f"leaves over 1 MiB not split {DEVICES} ways: {whole}"
