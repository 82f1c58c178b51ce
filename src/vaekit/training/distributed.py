"""Data-parallel training on PyTorch's own engine: torchrun, ``torch.distributed`` and DistributedDataParallel.

``torchrun --nproc-per-node N -m vaekit train ...`` (or ``vaekit train --nproc N``, which starts
torchrun) runs N copies of the trainer. Each is one *rank* of a process group (gloo on CPU, NCCL on
CUDA) and holds the whole model; ``DistributedDataParallel`` all-reduces the gradients during the
backward pass, so every rank takes the same optimizer step and the weights stay identical.

How the work is split, and why results do not depend on the number of processes:

- ``--batch-size`` is the *global* batch. Every step takes the next ``batch_size`` indices of the
  epoch's seeded permutation, exactly as a single process would, and rank r keeps every world_size-th
  of them (``shard``): the in-memory equivalent of ``DistributedSampler``, without a DataLoader. The
  loss of each rank is weighted by its share of the global batch, so the averaged gradient is the
  gradient of the global batch mean, the same as one process computes.
- Each rank draws its own noise (reparameterization, dynamic binarization) from a generator seeded by
  the seed and the rank; rank 0's is exactly the single-process one. Checkpoints keep every rank's.
- Training sums are all-reduced at the end of an epoch; validation is split across the ranks the
  same way and all-reduced, so every rank sees the same numbers and stops early at the same epoch.
- Only rank 0 reads and writes the run directory (config, checkpoints, metrics, plots, images); the
  other ranks receive a resumed checkpoint from it, so nodes need not share a file system.

Without torchrun's environment (``RANK``, ``WORLD_SIZE``) everything here is a no-op for one process.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .device import resolve_device

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# A rank that waits longer than this for the others (a crashed peer, a node that never joined) gives up.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun started (it sets RANK, WORLD_SIZE, LOCAL_RANK and the master address)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def backend_for(device: torch.device) -> str:
    """The collective backend for a device: NCCL between GPUs, gloo on CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class DistributedContext:
    """This process's place in the process group; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    # --- the split of the work ---------------------------------------------------------------------
    def shard(self, global_indices: Tensor) -> Tensor:
        """This rank's part of a global batch: every world_size-th index, starting at its rank."""
        return global_indices[self.rank::self.world_size] if self.enabled else global_indices

    def loss_weight(self, local_count: int, global_count: int) -> float:
        """Factor for this rank's batch-mean loss so that DDP's average over ranks is the global batch mean."""
        return local_count * self.world_size / global_count if self.enabled else 1.0

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        """Global steps in an epoch of n examples; a last batch too small to give every rank an example is dropped."""
        steps = -(-n // batch_size)
        if self.enabled and n - (steps - 1) * batch_size < self.world_size:
            steps -= 1
        return steps

    # --- communication -------------------------------------------------------------------------------
    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module under DistributedDataParallel (gradients all-reduced in backward), or itself for one process."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum a tensor over all ranks, in place (and return it)."""
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. one rank saw Ctrl-C)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        return bool(self.all_reduce_sum(value).item() > 0)

    def gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's tensor (same shape and type on all ranks), in rank order, on every rank."""
        if not self.enabled:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return parts

    def broadcast_object(self, value: Any, device: torch.device) -> Any:
        """Rank 0's ``value`` on every rank (pickled over the process group, which only vaekit's ranks share)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


_context: DistributedContext | None = None


def current() -> DistributedContext:
    """The process group this process belongs to (rank 0 of 1 unless ``initialize`` joined one)."""
    return _context if _context is not None else DistributedContext()


def rank_seed(seed: int, rank: int) -> int:
    """The noise seed of a rank: the run's seed itself for rank 0, so a single process is unchanged."""
    return seed if rank == 0 else seed + 7_919 * rank


def initialize(device_name: str) -> DistributedContext:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA); one process without torchrun.

    Returns the context; call ``shutdown`` when training ends. With CUDA each rank takes the GPU of
    its ``LOCAL_RANK`` on its node.
    """
    global _context
    if not launched_by_torchrun():
        _context = DistributedContext()
        return _context
    rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = resolve_device(device_name)
    if device.type == "mps" and world > 1:
        raise ConfigError("distributed training on Apple's MPS is not supported by PyTorch; use --device cpu")
    backend = backend_for(device)
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; "
                              "start at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    _context = DistributedContext(rank=rank, world_size=world, local_rank=local, backend=backend)
    return _context


def device_for(device_name: str, context: DistributedContext) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA under torchrun, else the one asked for."""
    device = resolve_device(device_name)
    if context.backend == "nccl":
        return torch.device("cuda", context.local_rank)
    return device


def shutdown(wait_for_all: bool = False) -> None:
    """Leave the process group (if this process joined one).

    ``wait_for_all``: first wait until every rank got here (after a normal end). Without it a rank that
    finished early tore down gloo's connections while rank 0 was still writing the run directory, and
    the C++ side could abort ("terminate called without an active exception"). After an error there is
    no barrier: the other ranks may never arrive.
    """
    global _context
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait_for_all:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _context = None


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE`` (torchrun would read ``--nproc`` as its own option)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The torchrun command line that runs ``vaekit <argv>`` (less ``--nproc``) in ``nproc`` processes here."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "-m", "vaekit", *without_option(argv, "--nproc")]


def threads_per_process(nproc: int) -> int:
    """Intra-op threads per rank so that N ranks share the machine's cores instead of fighting over them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Start ``vaekit <argv>`` under torchrun in ``nproc`` local processes and wait; returns its exit code.

    Sets ``OMP_NUM_THREADS`` (unless already set) to the cores per process, so that ranks on a CPU
    do not oversubscribe it.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    process = subprocess.Popen(torchrun_command(nproc, argv), env=env)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached torchrun and its ranks too: wait while they checkpoint and stop
            continue
