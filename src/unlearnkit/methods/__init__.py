"""Unlearning methods, one file each (see registry.py)."""
