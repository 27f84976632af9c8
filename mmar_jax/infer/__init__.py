"""Inference loops: text decoding with a KV cache, image generation."""
