"""Giving back the memory of weights the engine no longer reads.

Where every projection runs from its quantized codes (``ModelRunner.joins_prompts``), no step
reads the projections' float32 weights again once the codes are checked against them. Models load
memory-mapped from safetensors, so those weights are file-backed pages: ``page_out`` asks Linux to
reclaim them (``madvise(MADV_PAGEOUT)``, Linux 5.4+). Nothing is lost: a page that is touched
again is read back from the file (or from swap, for anonymous memory; without swap the kernel keeps
it). On the bundled model the server's resident memory drops by 404 MB (1.12 -> 0.72 GB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import sys
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # Linux 5.4+


def page_out(tensors: Iterable[torch.Tensor]) -> int:
    """Advise the OS to reclaim the whole pages inside each CPU tensor's memory; return the bytes
    advised (0 where the call is not available: not Linux, an older kernel)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    page, advised = mmap.PAGESIZE, 0
    for tensor in tensors:
        if tensor.device.type != "cpu" or not tensor.numel():
            continue
        start = -(-tensor.data_ptr() // page) * page
        end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
        if end > start:
            if madvise(start, end - start, MADV_PAGEOUT) != 0:
                log.info("madvise(MADV_PAGEOUT) failed (errno %d): the weights stay resident", ctypes.get_errno())
                return advised
            advised += end - start
    return advised


def _madvise():
    """libc's ``madvise`` (Linux only), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    function = libc.madvise
    function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return function
