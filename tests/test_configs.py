"""Config presets load, overrides follow ml_collections, and bad values fail by field name."""

from __future__ import annotations

import json

import pytest

from mmar_jax import configs
from mmar_jax.models.backbone import BackboneConfig
from mmar_jax.train import mesh as mesh_lib


@pytest.mark.parametrize("name,hidden,layers,heads,kv,mlp,vocab,tied", [
    ("demo", 128, 4, 4, 2, 384, 512, True),
    ("mmar_0p5b", 896, 24, 14, 2, 4864, 151936, True),
    ("mmar_7b", 3584, 28, 28, 4, 18944, 152064, False),
])
def test_presets_have_the_published_dimensions(name, hidden, layers, heads, kv, mlp, vocab, tied):
  config = configs.load_config(f"configs/{name}.py")
  cfg = BackboneConfig.from_config(config)
  assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size,
          cfg.vocab_size, cfg.tie_word_embeddings) == (hidden, layers, heads, kv, mlp, vocab, tied)
  assert cfg.head_dim == hidden // heads


def test_override_sets_the_field():
  config = configs.load_config("configs/demo.py", ["model.num_layers=2", "--config.model.dtype=bfloat16"])
  assert config.model.num_layers == 2 and config.model.dtype == "bfloat16"


@pytest.mark.parametrize("override,message", [
    ("model.num_layrs=2", r"num_layrs.*Did you mean.*num_layers"),
    ("model.num_layers=abc", r"num_layers"),
    ("model.num_heads=5", r"config\.model\.num_heads=5 must divide config\.model\.hidden_size=128"),
    ("model.num_kv_heads=3", r"config\.model\.num_kv_heads=3 must divide config\.model\.num_heads=4"),
    ("model.dtype=fp8", r"config\.model\.dtype='fp8' must be one of"),
    ("model.remat_policy=some", r"config\.model\.remat_policy='some'"),
    ("mesh.fsdp=0", r"config\.mesh\.fsdp=0"),
    ("model.adapter_depth=-1", r"config\.model\.adapter_depth=-1 must be >= 0"),
    ("model.ce_chunk_size=-8", r"config\.model\.ce_chunk_size=-8 must be >= 0"),
    ("model.adapter_heads=3", r"config\.model\.adapter_heads=3 must be positive and divide"),
    ("model.mask_ratio_min=1.5", r"config\.model\.mask_ratio_min=1\.5"),
    ("model.mask_ratio_dist=beta", r"config\.model\.mask_ratio_dist='beta' must be one of"),
    ("model.mask_ratio_std=0.0", r"config\.model\.mask_ratio_std=0\.0 must be positive"),
    ("model.mask_ratio_loc=1.5", r"config\.model\.mask_ratio_loc=1\.5 must be in \[0, 1\]"),
    ("loss.diffusion_weight=-1.0", r"config\.loss\.diffusion_weight=-1\.0 must be non-negative"),
    ("diffusion.num_generation_steps=0", r"config\.diffusion\.num_generation_steps=0 must be positive"),
    ("data.image_resize=stretch", r"config\.data\.image_resize='stretch' must be one of \('center_crop', "
                                  r"'pad_to_square'\)"),
    ("data.image_background=notacolour", r"config\.data\.image_background='notacolour' must be a colour PIL knows"),
    ("data.min_image_size=0", r"config\.data\.min_image_size=0 must be a positive number of pixels"),
])
def test_bad_values_fail_naming_the_field(override, message):
  with pytest.raises(configs.ConfigError, match=message):
    configs.load_config("configs/demo.py", [override])


def test_mesh_must_match_the_device_count():
  assert mesh_lib.mesh_shape(configs.load_config("configs/demo.py"), 8) == (8, 1, 1)
  config = configs.load_config("configs/demo.py", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=1"])
  with pytest.raises(configs.ConfigError, match=r"covers 4 devices but there are 8"):
    configs.validate(config, num_devices=8)
  config = configs.load_config("configs/demo.py", ["mesh.fsdp=3"])
  with pytest.raises(configs.ConfigError, match=r"fixed axes \(3 devices\) do not divide the 8 devices"):
    configs.validate(config, num_devices=8)


def test_snapshot_round_trip_and_foreign_fields():
  config = configs.load_config("configs/mmar_7b.py")
  snapshot = json.loads(json.dumps(config.to_dict()))  # What a checkpoint stores.
  restored = configs.from_dict(snapshot)
  assert restored.to_dict() == config.to_dict()
  assert isinstance(restored.mesh.logical_axis_rules[0], tuple)
  snapshot["model"]["num_expertz"] = 8
  with pytest.raises(configs.ConfigError, match=r"config\.model\.num_expertz"):
    configs.from_dict(snapshot)


def test_an_older_snapshot_without_activation_rules_still_opens():
  # Checkpoints written before activations had logical names of their own hold a shorter table.
  config = configs.load_config("configs/demo.py")
  snapshot = json.loads(json.dumps(config.to_dict()))
  snapshot["mesh"]["logical_axis_rules"] = [r for r in snapshot["mesh"]["logical_axis_rules"]
                                            if not r[0].startswith("activation_")]
  restored = configs.from_dict(snapshot)
  assert dict(restored.mesh.logical_axis_rules) == dict(config.mesh.logical_axis_rules)


def test_a_rule_table_missing_an_axis_fails_by_name():
  config = configs.load_config("configs/demo.py")
  config.mesh.logical_axis_rules = tuple(r for r in config.mesh.logical_axis_rules if r[0] != "activation_mlp")
  with pytest.raises(configs.ConfigError, match=r"no rule for logical axes \['activation_mlp'\]"):
    configs.validate(config)


def test_an_older_snapshot_without_the_held_out_split_holds_nothing_out():
  # A run from before the split trained on every triple: its "unseen" table would be a lie.
  config = configs.load_config("configs/demo.py")
  snapshot = json.loads(json.dumps(config.to_dict()))
  assert configs.from_dict(snapshot).data.synthetic_held_out_modulus == 9
  del snapshot["data"]["synthetic_held_out_modulus"]
  assert configs.from_dict(snapshot).data.synthetic_held_out_modulus == 0
