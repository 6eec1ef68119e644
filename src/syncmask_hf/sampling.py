"""SyncMask's grouped batch sampling with semi-hard negatives, as a `batch_sampler` for torch / Accelerate.

Batches are made of *similar* items (same group key such as the sub-category, or neighbours along a random
direction of an embedding) so that in-batch ITC / ITM negatives are hard. Items that are *too* similar are false
negatives: several images of one product share one text, and colour variants copy descriptions. Our rule (the paper
does not pin it down): **no two items of one duplicate group are placed in one global batch**, where a duplicate
group joins items that share a product id or an identical text id (transitively). Such items are deferred to the next
batch of the same stream instead, so the batch keeps only semi-hard negatives, and every item is still yielded
exactly once per epoch. (The models also exclude same-product / identical-text pairs from negatives, so a group
that cannot be separated — more items than batches — is counted in `forced_duplicates`, not lost.)

Distributed: batches are built as *global* batches of `batch_size * num_replicas` (ITC gathers features across
ranks, so the negatives that matter are the global ones) and each rank takes its own contiguous share; all ranks
build the same global batches from `seed + epoch`. With `drop_last=False` the last partial global batch is split as
evenly as possible (shares may differ by one item; use `drop_last=True` for equal shapes under all_gather).

With Accelerate, which shards a DataLoader's `batch_sampler` itself (process i takes batches i, i+n, ...), build the
sampler with `num_replicas=accelerator.num_processes, all_ranks=True, drop_last=True` (Accelerate reshapes a
partial last batch): it then yields every rank's share of each global batch in rank order, so Accelerate's
sharding hands each process exactly its share. With a plain torch
DataLoader per process, pass `rank` (default: torch.distributed's) and leave `all_ranks=False`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def _duplicate_groups(product_ids: Sequence[Hashable], text_ids: Sequence[Hashable] | None) -> np.ndarray:
    """Union-find over items sharing a product id or a text id; returns a group index per item."""
    n = len(product_ids)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for ids in (product_ids, text_ids):
        if ids is None:
            continue
        first: dict = {}
        for i, key in enumerate(ids):
            if key is None or key == "":
                continue
            j = first.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[ri] = rj
    return np.array([find(i) for i in range(n)], dtype=np.int64)


class GroupedSemiHardBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices (this rank's share of each global batch).

    Args:
        product_ids: one product id per item (any hashable); items of one product are never in-batch negatives.
        batch_size: per-rank batch size.
        group_keys: optional similarity key per item (e.g. sub-category): items of one key are batched together.
        embeddings: optional (N, D) array used instead of `group_keys`: each epoch items are ordered by their
            projection on a random direction, so neighbours (similar items) share batches.
        text_ids: optional identical-text id per item (e.g. the normalised text's hash), merged into duplicate groups.
        num_replicas, rank: the distributed world (default: torch.distributed's, else 1 / 0).
        shuffle: reshuffle groups and items every epoch (call `set_epoch`).
        seed: base seed shared by all ranks.
        drop_last: drop the last incomplete global batch.
        all_ranks: yield all ranks' shares in rank order (for Accelerate's own sharding; see the module docstring).
    """

    def __init__(
        self,
        product_ids: Sequence[Hashable],
        batch_size: int,
        group_keys: Sequence[Hashable] | None = None,
        embeddings=None,
        text_ids: Sequence[Hashable] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        all_ranks: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if num_replicas is None or rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = num_replicas or (torch.distributed.get_world_size() if distributed else 1)
            rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        n = len(product_ids)
        for name, values in (("group_keys", group_keys), ("text_ids", text_ids), ("embeddings", embeddings)):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries but product_ids has {n}: give one per item")
        if n < num_replicas:
            raise ValueError(f"{n} items cannot be shared by {num_replicas} replicas")
        self.n = n
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.all_ranks = all_ranks
        self.epoch = 0
        self.duplicate_group = _duplicate_groups(product_ids, text_ids)
        self.group_keys = (
            None
            if group_keys is None
            else np.unique(np.asarray(group_keys, dtype=object).astype(str), return_inverse=True)[1]
        )
        self.embeddings = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        self.forced_duplicates = 0
        self._cache: tuple[int, list[list[list[int]]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        """Item order in which similar items are adjacent."""
        perm = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.group_keys is not None:
            group_rank = (
                rng.permutation(self.group_keys.max() + 1) if self.shuffle else np.arange(self.group_keys.max() + 1)
            )
            return perm[np.argsort(group_rank[self.group_keys[perm]], kind="stable")]
        if self.embeddings is not None:
            direction = rng.standard_normal(self.embeddings.shape[1]).astype(np.float32)
            return perm[np.argsort(self.embeddings[perm] @ direction, kind="stable")]
        return perm

    def _global_batches(self) -> list[list[int]]:
        """Fill global batches along the order; an item whose duplicate group is already in the batch is carried
        over to the next batch (tried first there), so batches hold at most one item per duplicate group."""
        rng = np.random.default_rng(self.seed + self.epoch)
        order = self._order(rng).tolist()
        size = self.batch_size * self.num_replicas
        groups = self.duplicate_group
        batches, carry, pos, forced = [], [], 0, 0
        while pos < len(order) or carry:
            batch, used, new_carry = [], set(), []
            for idx in carry:
                if len(batch) < size and groups[idx] not in used:
                    batch.append(idx)
                    used.add(groups[idx])
                else:
                    new_carry.append(idx)
            while len(batch) < size and pos < len(order):
                idx = order[pos]
                pos += 1
                if groups[idx] in used:
                    new_carry.append(idx)
                else:
                    batch.append(idx)
                    used.add(groups[idx])
            if not batch:  # only duplicates of one group are left: unavoidable, keep them (counted)
                batch, new_carry = new_carry[:size], new_carry[size:]
                forced += len(batch) - 1
            carry = new_carry
            batches.append(batch)
        self.forced_duplicates = forced
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        return batches

    def _rank_batches(self) -> list[list[list[int]]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        per_rank: list[list[list[int]]] = [[] for _ in range(self.num_replicas)]
        for batch in self._global_batches():
            if len(batch) < self.num_replicas:
                if not per_rank[0]:
                    raise ValueError(f"{len(batch)} items cannot be shared by {self.num_replicas} replicas")
                for r, idx in enumerate(batch):  # too few to share: append one each to the previous batches
                    per_rank[r][-1].append(idx)
                continue
            for r, chunk in enumerate(np.array_split(np.asarray(batch), self.num_replicas)):
                per_rank[r].append(chunk.tolist())
        self._cache = (self.epoch, per_rank)
        return per_rank

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self._rank_batches()
        if self.all_ranks:
            for step in range(len(per_rank[0])):
                for share in per_rank:
                    yield share[step]
        else:
            yield from per_rank[self.rank]

    def __len__(self) -> int:
        per_rank = self._rank_batches()
        return len(per_rank[0]) * (self.num_replicas if self.all_ranks else 1)


class RandomBatchSampler(GroupedSemiHardBatchSampler):
    """The plain baseline of the SyncMask ablation ("semi-hard vs plain batches"): uniformly shuffled global batches,
    same-product items free to meet. Same distributed scheme, `set_epoch` and arguments as the grouped sampler
    (with every item its own group nothing is deferred, so the batches are plain cuts of a seeded permutation)."""

    def __init__(self, num_items: int, batch_size: int, **kwargs):
        super().__init__(list(range(num_items)), batch_size, **kwargs)
