"""Checkpoint conversion at the framework boundaries (Hugging Face, LDM/MAR VAE, PyTorch)."""
