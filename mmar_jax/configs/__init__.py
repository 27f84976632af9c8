"""Configs as data: the schema with every default (schema.py), loading (loading.py), validation per
section (validation.py) and the sizes derived from a config by arithmetic (derived.py).

`load_config(path, overrides)` follows the ml_collections convention
(`--config=configs/demo.py --config.model.num_layers=4`) and validates before any compute.
"""

from mmar_jax.configs.derived import head_dim, image_grid, image_token_dim, num_image_tokens
from mmar_jax.configs.loading import from_dict, load_config, with_values
from mmar_jax.configs.schema import (ATTENTION_IMPLS, CFG_SCHEDULES, DATA_SOURCES, DEFAULT_LOGICAL_AXIS_RULES,
                                     DTYPES, IMAGE_RESIZES, LORA_TARGETS, MASK_RATIO_DISTS, MESH_AXES,
                                     NOISE_SCHEDULES, PREDICTIONS, REMAT_POLICIES, SAMPLERS, TOKENIZER_KINDS,
                                     base_config)
from mmar_jax.configs.validation import (ConfigError, validate, validate_data, validate_images,
                                         validate_tokenizer)

__all__ = [
    "ATTENTION_IMPLS", "CFG_SCHEDULES", "ConfigError", "DATA_SOURCES", "DEFAULT_LOGICAL_AXIS_RULES", "DTYPES",
    "IMAGE_RESIZES", "LORA_TARGETS", "MASK_RATIO_DISTS", "MESH_AXES", "NOISE_SCHEDULES", "PREDICTIONS",
    "REMAT_POLICIES", "SAMPLERS", "TOKENIZER_KINDS", "base_config", "from_dict", "head_dim", "image_grid",
    "image_token_dim", "load_config", "num_image_tokens", "validate", "validate_data", "validate_images",
    "validate_tokenizer", "with_values",
]
