"""Flax modules: the Qwen2 backbone, the diffusion head, image tokenizers, the unified model."""
