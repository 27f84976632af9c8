"""mmar_jax: a JAX/Flax training stack for MMAR."""

__version__ = "0.1.0"
