"""The allocator tuning the training loop applies (glibc's mallopt)."""

import platform
import subprocess
import sys

import pytest

# In a fresh interpreter (a pristine allocator): is a new 24 MiB block mmapped? glibc marks an
# mmapped chunk with bit 0x2 of the size word just before the pointer.
PROBE = """
import ctypes, ctypes.util, sys
from pipeline._malloc import keep_freed_memory
tuned = sys.argv[1] == "tuned" and keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
p = libc.malloc(24 << 20)
print(int(tuned), int(bool(ctypes.c_size_t.from_address(p - 8).value & 2)))
"""


def _probe(mode: str) -> tuple[bool, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return bool(int(out[0])), bool(int(out[1]))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    assert _probe("default") == (False, True)  # glibc's default: a fresh mapping
    assert _probe("tuned") == (True, False)  # tuned: from the heap, reused after free
