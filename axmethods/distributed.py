"""Which process this is when a distributed launcher started us, and the few collectives the stages need.

`accelerate launch --multi_gpu --num_processes N`, multi-node accelerate configs and `torchrun --nproc_per_node N`
set `WORLD_SIZE` / `RANK` / `LOCAL_RANK`; accelerate's `PartialState` (the state the Trainer uses too) then joins
the process group (NCCL on GPUs, gloo on CPUs). A plain `axbench …` (no launcher) never imports accelerate or
touches torch.distributed: every helper below is the identity for one process.

The contract of every stage: work is split deterministically (`shard`: round-robin by position), results are
gathered (`gather`: every process gets the list of every process's part, in rank order), and only rank 0
(`is_main`) writes files. LLM stages run on rank 0 while the others wait (`broadcast` carries the outcome), so
waits use a long process-group timeout (`AXBENCH_DIST_TIMEOUT` seconds, default 24 h): generation and judging
may take hours, and they scale through the LLM server, not through our processes.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 24 * 3600


def launched() -> bool:
    """True when a distributed launcher started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@functools.cache
def state() -> Any:
    """accelerate's `PartialState`, which joins the process group (None for a single process).

    Called first thing by the CLI, so the group gets our long timeout. Rank and world size are read from
    torch.distributed afterwards: the transformers Trainer resets and re-creates accelerate's shared state for
    each run, and the process group is what outlives that.
    """
    if not launched():
        return None
    import torch
    from accelerate import PartialState

    if not torch.cuda.is_available():
        # accelerate (and the Trainer's TrainingArguments, which re-creates the state) treat a CPU-only launch as
        # one process unless told it is a CPU run; with this they join the launcher's gloo group.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    timeout = timedelta(seconds=float(os.environ.get("AXBENCH_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    return PartialState(timeout=timeout)


def rank() -> int:
    if state() is None:
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    if state() is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def is_main() -> bool:
    """Rank 0: the one process that writes files, takes the run lock and talks to the LLM."""
    return rank() == 0


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of `items`: positions rank, rank + N, … (deterministic, balanced within one item)."""
    return list(items[rank()::world_size()])


def gather(value: T) -> list[T]:
    """Every process's `value`, in rank order, on every process ([value] for one process)."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, value)
    return parts


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """Undo `shard`: the gathered shards (rank order) interleaved back into the original order."""
    merged: list[T] = []
    for step in range(max((len(part) for part in parts), default=0)):
        merged.extend(part[step] for part in parts if step < len(part))
    return merged


def broadcast(value: T) -> T:
    """Rank 0's `value` on every process (the others pass anything, e.g. None)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def announce() -> None:
    """Once per process at start-up: say which process this is; quieten the others' logs and progress bars."""
    if not launched():
        return
    if not getattr(announce, "done", False):  # once per process, even when one process runs several commands
        announce.done = True  # type: ignore[attr-defined]
        print(f"axbench: process {rank() + 1} of {world_size()} (rank {rank()}, {state().device})",
              file=sys.stderr, flush=True)
    if rank() != 0:
        import logging

        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # every bar of ours goes through huggingface_hub's tqdm
        for name in ("axdata", "axmethods", "axeval"):
            logging.getLogger(name).setLevel(logging.WARNING)
