"""Noise schedules, diffusion losses and samplers."""
