"""Seed mixing: every random draw in the package is seeded from a few integers.

Two mixers with different histories, kept bit-identical because results depend on them:

* :func:`mix_seed` (splitmix64 chain): training draws, ``(seed, step, 0, sample)`` for
  noise and timesteps, ``(seed, step, 1, rank)`` for augmentation.
* :func:`member_seed` (numpy ``SeedSequence``): one generator per ensemble member when
  sampling, so a member's noise depends on ``(seed, member)`` only, whatever the chunking.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_MASK63 = (1 << 63) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 chain): (seed, step, index) -> seed."""
    state = _GOLDEN
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + _GOLDEN) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def member_seed(seed: int, member: int) -> int:
    """A 63-bit seed for ensemble member ``member`` of run ``seed``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(member)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & _MASK63
