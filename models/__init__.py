"""Lethe's ML core: datasets, architectures, training, unlearning methods, verification.

Plain PyTorch; nothing here imports web, database or queue code, so every algorithm
can be read, tested and benchmarked on its own.
"""
