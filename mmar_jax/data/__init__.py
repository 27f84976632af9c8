"""Grain input pipelines: sources, transforms, batches."""
