"""The narrow views the layers get hold no defaults: the schema (configs/schema.py) is the one place a
default lives, and every view is built from a config.

A second default in a view is a second truth that drifts (it did: `BackboneConfig.dtype` said
float32 while the schema said bfloat16), so no field of a view may have one. Building each view
from a preset and from the preset's JSON snapshot read back through the schema must agree: the
views read the config, nothing else.
"""

from __future__ import annotations

import dataclasses

import pytest

from mmar_jax import configs
from mmar_jax.data import images, latent_source, pipeline, sequences
from mmar_jax.models import kl_vae, tokenizers
from mmar_jax.models.adapter import AdapterConfig
from mmar_jax.models.backbone import BackboneConfig
from mmar_jax.models.diffusion_head import HeadConfig
from mmar_jax.models.mmar import MaskRatioConfig, MMARConfig
from mmar_jax.train import step

VIEWS = (BackboneConfig, AdapterConfig, HeadConfig, MaskRatioConfig, MMARConfig, tokenizers.TokenizerConfig,
         kl_vae.VAEConfig, step.StepConfig, sequences.SequenceConfig, pipeline.PipelineConfig,
         latent_source.LatentsConfig, images.ImageConfig)
PRESETS = ("demo", "mmar_0p5b", "mmar_7b")
MASK_ID = 3  # MMARConfig's one argument that is not config: the tokenizer's <mask> id.


def build(cls, config):
  return cls.from_config(config, MASK_ID) if cls is MMARConfig else cls.from_config(config)


@pytest.mark.parametrize("cls", VIEWS, ids=lambda c: c.__name__)
def test_no_view_field_has_a_default(cls):
  defaulted = [f.name for f in dataclasses.fields(cls)
               if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
  assert not defaulted, f"{cls.__name__} fields with their own default: {defaulted}"


@pytest.mark.parametrize("preset", PRESETS)
def test_views_read_the_config_only(preset):
  config = configs.load_config(f"configs/{preset}.py")
  from_snapshot = configs.from_dict(config.to_dict())  # The schema's defaults with the preset's values.
  for cls in VIEWS:
    assert build(cls, config) == build(cls, from_snapshot), cls.__name__


def test_views_follow_the_schema_where_a_preset_is_silent():
  base = configs.base_config()
  assert BackboneConfig.from_config(base).dtype == base.model.dtype
  assert HeadConfig.from_config(base).dtype == base.head.dtype
  assert tokenizers.TokenizerConfig.from_config(base).kind == base.tokenizer.kind
  assert MaskRatioConfig.from_config(base).min_ratio == base.model.mask_ratio_min
  # And a changed schema value reaches the view: nothing in between keeps an old copy.
  changed = configs.with_values({"model.dtype": "float16", "head.norm_eps": 1e-3, "tokenizer.vae_z_channels": 8})
  assert BackboneConfig.from_config(changed).dtype == "float16"
  assert HeadConfig.from_config(changed).norm_eps == 1e-3
  assert kl_vae.VAEConfig.from_config(changed).z_channels == 8


def test_with_values_names_an_unknown_path():
  with pytest.raises(configs.ConfigError, match=r"config\.model\.hiden_size is not a field"):
    configs.with_values({"model.hiden_size": 8})
  with pytest.raises(configs.ConfigError, match=r"config\.modle\.hidden_size is not a field"):
    configs.with_values({"modle.hidden_size": 8})
