"""Seeds: global seeding and stateless seed derivation for reproducible, resumable randomness."""

from __future__ import annotations

import random

import numpy as np
import torch

# Distinct odd constants mixing (seed, epoch, step, stream) into one 63-bit generator seed.
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


def derive_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers, e.g. ``(seed, epoch, step, stream)``.

    Randomness seeded this way is a pure function of where training stands, so a resumed run replays it
    without any generator state in the checkpoint.
    """
    h = 0x2545F4914F6CDD1D
    for i, p in enumerate(parts):
        h = ((h ^ (int(p) + 1)) * _MIX[i % len(_MIX)]) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``.

    The ``meta`` device (shape-only builds, e.g. checking a config) has no generators; a CPU one stands in.
    """
    g = torch.Generator(device="cpu" if torch.device(device).type == "meta" else device)
    g.manual_seed(seed)
    return g
