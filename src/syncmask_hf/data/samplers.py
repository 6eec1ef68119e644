"""The batch samplers of pretraining, as torch / Accelerate samplers over catalogue rows.

- `GroupedSemiHardBatchSampler` / `RandomBatchSampler` (SyncMask): batches of similar items with semi-hard
  negatives, or random batches under the same no-duplicates rule; `--sampler curriculum` runs random batches first.
- `OneImagePerProductSampler` (E2): one random image per product per epoch.

Grouped semi-hard batches (SyncMask, a `batch_sampler`)
-------------------------------------------------------
Batches are made of *similar* items (same group key such as the sub-category, or neighbours along a random
direction of an embedding) so that in-batch ITC / ITM negatives are hard. Items that are *too* similar are false
negatives: several images of one product share one text, and colour variants copy descriptions. Our rule (the paper
does not pin it down): **no two items that share a product id or an identical text id are placed in one global
batch**. The rule is pairwise, never transitive: A and C may meet when A shares a text with B and B a product with C
(a transitive union once chained 471 of 500 H&M items into one "duplicate" group and starved the batches). A
conflicting item is deferred to the next batch of the same stream (tried first there), so the batch keeps only
semi-hard negatives.

Distributed: batches are built as *global* batches of `batch_size * num_replicas` (ITC gathers features across
ranks, so the negatives that matter are the global ones) and each rank takes its own contiguous share; all ranks
build the same global batches from `seed + epoch`, and every rank's share of a step has the same size. Only the
tail of an epoch can leave global batches short (deferred items with nowhere else to go): with `drop_last=True`
they are dropped and counted in `dropped_items`; with `drop_last=False` they are yielded, each padded to a multiple
of `num_replicas` with items of the epoch's first batch (counted in `padded_items`, as `DistributedSampler` pads).

With Accelerate, which shards a DataLoader's `batch_sampler` itself (process i takes batches i, i+n, ...), build the
sampler with `num_replicas=accelerator.num_processes, all_ranks=True, drop_last=True` (Accelerate reshapes a
partial last batch): it then yields every rank's share of each global batch in rank order, so Accelerate's
sharding hands each process exactly its share. With a plain torch
DataLoader per process, pass `rank` (default: torch.distributed's) and leave `all_ranks=False`.

One image per product (E2, a `sampler`)
---------------------------------------
Fashion catalogues show each product in several images that share one text. E2 trains on one randomly chosen image
per product in each epoch, so a batch never holds two images of one product (no false negatives in the in-batch
InfoNCE) and every product weighs the same however many photos it has. This is a plain `torch.utils.data.Sampler`
over dataset rows: give it the rows' product ids, pass it to a `DataLoader(..., sampler=...)`, and call
`set_epoch(epoch)` each epoch to draw other images (as with `DistributedSampler`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def _codes(values: Sequence[Hashable] | None, n: int) -> np.ndarray:
    """Integer code per item (-1 for a missing key, which conflicts with nothing)."""
    if values is None:
        return np.full(n, -1, dtype=np.int64)
    table: dict = {}
    return np.array([-1 if v is None or v == "" else table.setdefault(v, len(table)) for v in values], dtype=np.int64)


def _admit(idx: int, batch: list, used_products: set, used_texts: set, products, texts) -> bool:
    """Add item `idx` to `batch` unless its product or its (known) text is already there."""
    if products[idx] in used_products or (texts[idx] >= 0 and texts[idx] in used_texts):
        return False
    batch.append(idx)
    if products[idx] >= 0:
        used_products.add(products[idx])
    if texts[idx] >= 0:
        used_texts.add(texts[idx])
    return True


class GroupedSemiHardBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices (this rank's share of each global batch).

    Args:
        product_ids: one product id per item (any hashable); items of one product are never in-batch negatives.
        batch_size: per-rank batch size.
        group_keys: optional similarity key per item (e.g. sub-category): items of one key are batched together.
        embeddings: optional (N, D) array used instead of `group_keys`: each epoch items are ordered by their
            projection on a random direction, so neighbours (similar items) share batches.
        text_ids: optional identical-text id per item (e.g. the normalised text's hash): items with equal text ids
            are never in one global batch either.
        num_replicas, rank: the distributed world (default: torch.distributed's, else 1 / 0).
        shuffle: reshuffle groups and items every epoch (call `set_epoch`).
        seed: base seed shared by all ranks.
        drop_last: drop incomplete global batches (counted in `dropped_items`); False pads them to a multiple of
            `num_replicas` (counted in `padded_items`).
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
        self.product_code = _codes(product_ids, n)
        self.text_code = _codes(text_ids, n)
        self.group_keys = (
            None
            if group_keys is None
            else np.unique(np.asarray(group_keys, dtype=object).astype(str), return_inverse=True)[1]
        )
        self.embeddings = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        self.dropped_items = 0
        self.padded_items = 0
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
        """Fill global batches along the order; an item whose product or text is already in the batch is carried
        over to the next batch (tried first there). While the order lasts every batch is full; the short batches
        of the tail are dropped (`drop_last`) or padded to a multiple of `num_replicas`."""
        rng = np.random.default_rng(self.seed + self.epoch)
        order = self._order(rng).tolist()
        size = self.batch_size * self.num_replicas
        products, texts = self.product_code, self.text_code
        batches, carry, pos = [], [], 0
        while pos < len(order) or carry:
            batch, used_products, used_texts, new_carry = [], set(), set(), []
            for idx in carry:
                if len(batch) >= size or not _admit(idx, batch, used_products, used_texts, products, texts):
                    new_carry.append(idx)
            while len(batch) < size and pos < len(order):
                idx = order[pos]
                pos += 1
                if not _admit(idx, batch, used_products, used_texts, products, texts):
                    new_carry.append(idx)
            carry = new_carry
            batches.append(batch)  # never empty: the first carried item always fits an empty batch
        self.dropped_items = self.padded_items = 0
        if self.drop_last:
            self.dropped_items = sum(len(b) for b in batches if len(b) < size)
            return [b for b in batches if len(b) == size]
        first = batches[0] if batches else []
        for batch in batches:
            missing = -len(batch) % self.num_replicas
            if missing:
                # Pad from the first batch, preferring items that do not conflict with this one.
                taken_p, taken_t = {products[i] for i in batch}, {texts[i] for i in batch}
                free = [i for i in first if products[i] not in taken_p and texts[i] not in taken_t]
                pool = free + [i for i in first if i not in free]
                batch.extend((pool * (missing // max(len(pool), 1) + 1))[:missing])
                self.padded_items += missing
        return batches

    def _rank_batches(self) -> list[list[list[int]]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        per_rank: list[list[list[int]]] = [[] for _ in range(self.num_replicas)]
        for batch in self._global_batches():
            share = len(batch) // self.num_replicas  # every batch is a multiple of num_replicas: equal shares
            for r in range(self.num_replicas):
                per_rank[r].append(batch[r * share : (r + 1) * share])
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


class OneImagePerProductSampler(Sampler[int]):
    """Yields one random row index per product each epoch, products in random order.

    Args:
        product_ids: the product id of every dataset row (any hashable: str, int); rows with equal ids are images of
            one product. Empty ids are an error (a row without a product cannot be grouped).
        shuffle: shuffle the product order (the image chosen per product is always random).
        seed: base seed; the draw of epoch `e` uses `seed + e`, identical on every rank.
        num_replicas / rank: shard the products across processes (each rank gets every `num_replicas`-th product
            of the common permutation; the last products are dropped so all ranks have the same length).
    """

    def __init__(
        self,
        product_ids: Sequence,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"OneImagePerProductSampler: rank {rank} is not in [0, {num_replicas}).")
        groups: dict = {}
        for row, pid in enumerate(product_ids):
            if pid is None or pid == "":
                raise ValueError(
                    f"OneImagePerProductSampler: row {row} has no product id; fill `product_id` (e.g. with the "
                    "item id) so every row belongs to a product."
                )
            groups.setdefault(pid, []).append(row)
        if not groups:
            raise ValueError("OneImagePerProductSampler: no rows (the dataset is empty).")
        self.groups = list(groups.values())
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank

    @classmethod
    def from_dataset(cls, dataset, column: str = "product_id", **kwargs) -> OneImagePerProductSampler:
        """From a `datasets.Dataset` (or anything indexable by column name) with a product id column."""
        return cls(dataset[column], **kwargs)

    @property
    def num_products(self) -> int:
        return len(self.groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_products // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = self.num_products
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        order = order[: len(self) * self.num_replicas][self.rank :: self.num_replicas]
        picks = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        for product in order:
            rows = self.groups[product]
            yield rows[picks[product] % len(rows)]


__all__ = ["OneImagePerProductSampler"]
