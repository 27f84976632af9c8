"""config.data validation names the field and the value."""

from __future__ import annotations

import pytest

from mmar_jax import configs


@pytest.mark.parametrize("field,value,match", [
    ("source", "webdataset", "config.data.source='webdataset'"),
    ("seq_len", 11, "config.data.seq_len=11 cannot hold one image of 9 tokens"),
    ("caption_dropout", 1.5, r"config.data.caption_dropout=1.5 must be in \[0, 1\]"),
    ("num_workers", -1, "config.data.num_workers=-1"),
    ("qa_turns", 0, "config.data.qa_turns=0 must be positive"),
    ("validation_fraction", 1.0, r"config.data.validation_fraction=1.0 must be in \[0, 1\)"),
    ("synthetic_held_out_modulus", 1, r"config.data.synthetic_held_out_modulus=1 must be 0 .* or in \[2, 9\]"),
])
def test_bad_data_fields_fail_by_name(field, value, match):
  config = configs.load_config("configs/demo.py")
  config.unlock()
  config.data[field] = value
  with pytest.raises(configs.ConfigError, match=match):
    configs.validate(config)


def test_manifest_source_needs_a_manifest():
  with pytest.raises(configs.ConfigError, match="config.data.manifest"):
    configs.load_config("configs/demo.py", ["data.source=manifest"])


def test_tfds_source_needs_a_name_and_paired_keys():
  with pytest.raises(configs.ConfigError, match="config.data.tfds_name"):
    configs.load_config("configs/demo.py", ["data.source=tfds"])
  with pytest.raises(configs.ConfigError, match="config.data.tfds_answer_key"):
    configs.load_config("configs/demo.py", ["data.source=tfds", "data.tfds_name=x", "data.tfds_question_key=q"])


def test_a_mixture_needs_entries_of_one_image_kind():
  with pytest.raises(configs.ConfigError, match="config.data.mixture='' must list entries"):
    configs.load_config("configs/demo.py", ["data.source=mixture"])
  with pytest.raises(configs.ConfigError, match="mixes latent caches with pixel sources"):
    configs.load_config("configs/demo.py", ["data.source=mixture", "data.mixture=latents:c@1,synthetic:10@1"])
