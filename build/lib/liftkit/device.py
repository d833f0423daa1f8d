"""Resolving the ``--device`` option of every script."""

from __future__ import annotations

import torch

from liftkit.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else as torch parses it (ConfigError if unusable)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown --device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but no CUDA device is available; use --device cpu")
    return dev
