"""Lowering a checked net to PyTorch. Everything under here imports torch."""
