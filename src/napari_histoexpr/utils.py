"""Process-level helpers shared by the layers above."""

from __future__ import annotations


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``) after a view: the
    large, short-lived buffers of a zoomed-out view otherwise stay in the process for good (the
    RSS of a long session kept every high-water mark). A no-op elsewhere."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
