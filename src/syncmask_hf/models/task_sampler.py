"""FashionFAE's task sampling: one pre-training task per step, drawn with fixed probabilities.

The paper does not sum the five objectives every step; it samples one task per step (itm 0.23, itc 0.31, mlm 0.23,
apir 0.23), which keeps each step as cheap as one task and balances the objectives by frequency. AETP is not a
separate slot: it is what the "mlm" slot runs when `config.aetp` is True (plain MLM otherwise).

The sampler has its own seeded generator, so every rank of a distributed run (same seed, same number of draws)
picks the same task at the same step, which data-parallel training needs (all ranks must run the same graph).
Copied beside the modeling file for remote code: imports only the standard library.
"""

from __future__ import annotations

import random
from collections.abc import Mapping


class FashionFAETaskSampler:
    """Seeded draw of one task name per call, with probabilities `probs` (a mapping task -> probability)."""

    def __init__(self, probs: Mapping[str, float], seed: int = 0):
        items = [(task, float(p)) for task, p in probs.items()]
        if not items or any(p < 0 for _, p in items):
            raise ValueError(f"task probabilities must be a non-empty mapping of numbers >= 0, got {dict(probs)}")
        total = sum(p for _, p in items)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"task probabilities sum to {total:.6f}, they must sum to 1: {dict(probs)}")
        self.tasks = [task for task, p in items if p > 0]
        self.weights = [p for _, p in items if p > 0]
        self.seed = seed
        self._rng = random.Random(seed)

    def sample(self) -> str:
        """The task for the next step."""
        return self._rng.choices(self.tasks, weights=self.weights, k=1)[0]

    __call__ = sample

    def state_dict(self) -> dict:
        """Generator state, to resume a run with the same task sequence (lists and numbers: checkpoints keep it as
        JSON, never a pickle)."""
        version, internal, gauss = self._rng.getstate()
        return {"seed": self.seed, "rng_state": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng_state"]
        self.seed = int(state["seed"])
        self._rng.setstate((int(version), tuple(int(x) for x in internal), gauss))

    def __repr__(self) -> str:
        probs = ", ".join(f"{t}={p:g}" for t, p in zip(self.tasks, self.weights))
        return f"{type(self).__name__}({probs}, seed={self.seed})"


__all__ = ["FashionFAETaskSampler"]
