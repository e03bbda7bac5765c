"""Pick the compute device once: CUDA when present, CPU otherwise (no code change)."""
from __future__ import annotations

import os

import torch


def get_device(prefer: str | None = None) -> torch.device:
    """`prefer` (or LETHE_DEVICE) may force "cpu"; otherwise CUDA wins when available."""
    choice = prefer or os.environ.get("LETHE_DEVICE")
    if choice:
        return torch.device(choice)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
