"""Evaluation metrics over sets of images and answers."""
