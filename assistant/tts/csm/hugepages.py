"""CPU weights in transparent huge pages.

Every frame streams all the weights once (about 0.5 GB at the `small` bench config). Through 4 KiB pages that
evicts every TLB entry, so each small op that follows a matmul pays page-table walks for its own code and data,
which are far dearer under a hypervisor: on the 2-core development VM a 2 MB head matmul took 6 ms with 4 KiB
pages and 0.35 ms with 2 MiB ones, and an argmax right after a 32 MB matmul 1-5 ms instead of 0.05.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # Linux
ALIGN = 64


def in_huge_pages(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same CPU tensors, copied into one 2 MiB-aligned buffer advised for transparent huge pages.

    Where the advice is unavailable (not Linux, THP off) the buffer is ordinary memory and nothing else changes.
    """
    sizes = {name: -(-w.numel() * w.element_size() // ALIGN) * ALIGN for name, w in weights.items()}
    total = -(-sum(sizes.values()) // HUGE_PAGE) * HUGE_PAGE
    raw = torch.empty(total + HUGE_PAGE, dtype=torch.uint8)  # not touched yet: the advice comes before the copy
    start = -raw.data_ptr() % HUGE_PAGE
    _advise_huge(raw.data_ptr() + start, total)
    out, offset = {}, start
    for name, w in weights.items():
        nbytes = w.numel() * w.element_size()
        out[name] = raw[offset : offset + nbytes].view(w.dtype).view(w.shape).copy_(w)
        offset += sizes[name]
    return out


def _advise_huge(address: int, length: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), MADV_HUGEPAGE)  # best effort: failure is harmless
