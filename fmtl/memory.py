"""Peak memory of one call: what ``max_memory`` is measured against.

The peak is the largest amount of memory torch allocated during the call above what was live
when it started (so the inputs, the parameters and the model's state do not count; everything
the call creates, including its outputs, does). CUDA devices read the caching allocator's
peak counter. On the CPU torch keeps no such counter, so the call runs once under
``torch.profiler`` with ``profile_memory=True`` and the peak is read from its allocation events
(each records the total allocated after it): a few times slower than the call itself, which is
why :mod:`fmtl.strategy` measures once per problem and caches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["peak_bytes"]


def _walk(nodes: Iterable[Any]):
    for n in nodes:
        yield n
        yield from _walk(n.children)


def _cpu_peak(fn: Callable[[], Any]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # kineto prints a line at every profiler start and stop unless told otherwise (read once,
    # at its first use); a user's own setting wins
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.experimental_event_tree()
    allocs = [n for n in _walk(events) if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu"]
    if not allocs:
        return 0
    allocs.sort(key=lambda n: n.start_time_ns)
    # total_allocated is the allocator's running total after each event; before the first
    # event it was that total minus the first allocation's size
    base = allocs[0].extra_fields.total_allocated - allocs[0].extra_fields.alloc_size
    return max(0, max(n.extra_fields.total_allocated for n in allocs) - base)


def peak_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes torch allocates on ``device`` while ``fn()`` runs, above what was live before.

    Eager only (it runs ``fn`` once). CUDA: the allocator's peak counter (reset first); CPU:
    the profiler's allocation events. Other devices: 0 (unknown).

    Example:
        >>> peak_bytes(lambda: torch.empty(1024, 1024)) >= 4 * 2**20
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if device.type == "cpu":
        return _cpu_peak(fn)
    fn()
    return 0
