"""Where the trainer's batches come from: a tensor in memory (the fast path) or a stream read by DataLoader workers.

Both visit each epoch in the same seeded permutation and take the same global batches, and under
torchrun both give each rank its shard of every global batch (``DistributedContext.shard``), so the
examples a step trains on never depend on how the data is held or on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..errors import VaekitError
from .distributed import DistributedContext

if TYPE_CHECKING:
    from ..data.streaming import StreamedSplit

Batch = tuple[int, Tensor, "Tensor | None", int]
"""(step in the epoch, this rank's examples on the device, their labels (class indices) for a conditional model
or None, examples in the global batch)"""


def epoch_permutation(seed: int, epoch: int, n: int) -> Tensor:
    """The order in which epoch ``epoch`` visits the n training examples (seeded, the same on every rank)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class InMemoryBatches:
    """Batches indexed straight out of one tensor on the device: no collation, no worker processes."""

    def __init__(self, x: Tensor, batch_size: int, seed: int, context: DistributedContext, device: torch.device,
                 y: Tensor | None = None) -> None:
        self.x = x.to(device)
        self.y = None if y is None else y.to(device)
        self.batch_size, self.seed, self.context, self.device = batch_size, seed, context, device
        self.steps_per_epoch = context.steps_per_epoch(len(x), batch_size)

    def __len__(self) -> int:
        return len(self.x)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        perm = epoch_permutation(self.seed, epoch, len(self.x)).to(self.device)
        size = self.batch_size
        for step in range(start_step, self.steps_per_epoch):
            indices = perm[step * size:(step + 1) * size]
            mine = self.context.shard(indices)
            yield step, self.x[mine], None if self.y is None else self.y[mine], len(indices)


class _IndexReader(torch.utils.data.Dataset):
    """A map-style data set whose items are whole batches: ``reader[indices]`` reads those examples.

    An item is (examples, unreadable files met, error): a vaekit error (a damaged file, NaN values) comes back as a
    value, so that the main process raises it as it is; raised in a worker, torch would re-raise it wrapped in a
    message holding the worker's whole traceback.
    """

    def __init__(self, split: "StreamedSplit") -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: np.ndarray) -> tuple[Tensor | None, list, VaekitError | None]:
        try:
            x, found = self.split.read_batch(indices)
        except VaekitError as err:
            return None, [], err
        return torch.from_numpy(x), list(found.items()), None


class StreamedBatches:
    """Batches read from disk by ``torch.utils.data.DataLoader`` workers while the model trains on earlier ones.

    Each worker reads a whole batch in one call (sorted reads from memory-mapped ``.npy`` files or image
    decoding), so the per-example overhead of a default DataLoader is avoided; ``num_workers`` batches
    are prepared ahead. Memory held: a few batches per worker, never the data set.
    """

    def __init__(self, split: "StreamedSplit", batch_size: int, seed: int, context: DistributedContext,
                 device: torch.device, num_workers: int = 2) -> None:
        self.split = split
        self.batch_size, self.seed, self.context, self.device = batch_size, seed, context, device
        self.num_workers = num_workers
        self.steps_per_epoch = context.steps_per_epoch(len(split), batch_size)

    def __len__(self) -> int:
        return len(self.split)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        perm = epoch_permutation(self.seed, epoch, len(self.split))
        size = self.batch_size
        plan = [(step, self.context.shard(perm[step * size:(step + 1) * size]).numpy(),
                 min(size, len(perm) - step * size)) for step in range(start_step, self.steps_per_epoch)]
        loader = torch.utils.data.DataLoader(
            _IndexReader(self.split), sampler=[indices for _, indices, _ in plan], batch_size=None,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if self.num_workers else None)
        for (step, _, global_count), (x, found, error) in zip(plan, loader):
            if error is not None:
                raise error
            if found:
                self.split.record_bad_files({int(index): tuple(file) for index, file in found})
            yield step, x.to(self.device, non_blocking=True), None, global_count


def training_batches(dataset, x_train: Tensor, config, context: DistributedContext,
                     device: torch.device, y_train: Tensor | None = None) -> InMemoryBatches | StreamedBatches:
    """The batches of a training run: streamed when the data set streams its training split, else in memory;
    with ``y_train`` (a conditional model's class indices) each batch carries its examples' labels."""
    from ..errors import ConfigError

    if config.batch_size < context.world_size:
        raise ConfigError(f"the batch size ({config.batch_size}) is the global batch, split over the processes; "
                          f"it must be at least the number of processes ({context.world_size})")
    stream = getattr(dataset, "train_stream", None)
    if stream is not None:
        if y_train is not None:
            raise ConfigError(f"a conditional model is trained on data held in memory; {dataset.name} does not fit "
                              "the memory budget, so it is streamed: load it with --data-in-memory yes (or give the "
                              "memory budget more room)")
        return StreamedBatches(stream, config.batch_size, config.seed, context, device, stream.num_workers)
    return InMemoryBatches(x_train, config.batch_size, config.seed, context, device, y=y_train)
