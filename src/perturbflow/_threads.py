"""Keep torch's thread count as the caller set it across calls into numba-backed scanpy code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def preserve_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit.

    numba (behind scanpy's Wilcoxon test, neighbours and UMAP) starts its OpenMP pool with one
    thread per core the first time it runs in parallel, and that also raises the thread count
    torch uses. On the small tensors of the flow, extra threads on busy cores slow training
    and prediction many times over, so functions that call such code put the count back.
    """
    import torch

    n_threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n_threads:
            torch.set_num_threads(n_threads)
