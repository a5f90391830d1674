"""Evaluation: per-item statistics collectors and metrics as pure functions of them."""
