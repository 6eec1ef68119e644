"""E2's "one random image per product per step" sampling.

Fashion catalogues show each product in several images that share one text. E2 trains on one randomly chosen image
per product in each epoch, so a batch never holds two images of one product (no false negatives in the in-batch
InfoNCE) and every product weighs the same however many photos it has. This is a plain `torch.utils.data.Sampler`
over dataset rows: give it the rows' product ids, pass it to a `DataLoader(..., sampler=...)`, and call
`set_epoch(epoch)` each epoch to draw other images (as with `DistributedSampler`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


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
