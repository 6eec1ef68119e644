"""Momentum (EMA) teachers and feature queues, as small pieces in the manner of ALBEF / LAVIS.

Copied beside the modeling files for remote code: imports only torch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .losses import gather_no_grad


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of `student` to be updated by `ema_update`."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter name.

    Buffers (e.g. position ids) are copied as they are. Written as a lerp so that a momentum of 1 leaves the
    teacher bit-identical and a momentum of 0 copies the student exactly. Matched by name, not by position: a head
    whose weight the student ties to another module (SyncMask's MLM decoder and the word embeddings) is a plain
    copy in the teacher, so the two de-duplicated parameter lists need not line up; a tensor shared inside the
    teacher is updated once.
    """
    source = dict(student.named_parameters(remove_duplicate=False))
    done = set()
    for name, t in teacher.named_parameters(remove_duplicate=False):
        if id(t) in done:
            continue
        if name not in source:
            raise ValueError(f"the student has no parameter {name!r}; was the teacher built by make_teacher?")
        done.add(id(t))
        t.lerp_(source[name].detach().to(t.dtype), 1.0 - momentum)


class FeatureQueue(nn.Module):
    """FIFO queues of normalised features (and the ids they belong to) from past batches, as in MoCo / ALBEF.

    Stored as non-persistent buffers: they are training state, saved by `accelerator.save_state` with the module
    state but not in `save_pretrained` weights.
    """

    def __init__(self, size: int, dims: dict[str, int]):
        super().__init__()
        self.size = size
        self.names = list(dims)
        for name, dim in dims.items():
            self.register_buffer(
                f"{name}_queue", nn.functional.normalize(torch.randn(size, dim), dim=-1), persistent=False
            )
        self.register_buffer("id_queue", torch.full((size,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("filled", torch.zeros((), dtype=torch.long), persistent=False)

    def get(self, name: str) -> torch.Tensor:
        """The valid part of one queue (entries never written are left out)."""
        return getattr(self, f"{name}_queue")[: int(self.filled)]

    def ids(self) -> torch.Tensor:
        return self.id_queue[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, ids: torch.Tensor, **features: torch.Tensor) -> None:
        """Push this step's features from every rank (gathered), overwriting the oldest entries."""
        if self.size == 0:
            return
        ids = gather_no_grad(ids)
        features = {name: gather_no_grad(value) for name, value in features.items()}
        n = min(ids.shape[0], self.size)
        ids, features = ids[-n:], {k: v[-n:] for k, v in features.items()}
        positions = (torch.arange(n, device=ids.device) + self.ptr) % self.size
        self.id_queue[positions] = ids
        for name, value in features.items():
            getattr(self, f"{name}_queue")[positions] = value.to(getattr(self, f"{name}_queue").dtype)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))
