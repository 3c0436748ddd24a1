"""run/allocator.py (NEUROSCOPE_MALLOC=reuse): inside ``reuse()`` a freed large block serves
the next one without page faults; outside, each large block is a fresh mapping that faults in
page by page; unset, nothing changes."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from indexer.run import allocator

BLOCK = 64 << 20  # larger than any mmap threshold glibc adapts to (32 MB)


@pytest.fixture
def enabled(monkeypatch):
    monkeypatch.setenv("NEUROSCOPE_MALLOC", "reuse")
    if not allocator.active():
        pytest.skip("needs glibc's malloc")


def faults_of_a_second_block() -> int:
    """Minor page faults of filling a large block after one like it was freed."""
    first = np.ones(BLOCK, np.uint8)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = np.ones(BLOCK, np.uint8)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def test_reuse_serves_large_blocks_from_freed_memory_and_release_returns_it(enabled):
    with allocator.reuse():
        reused = faults_of_a_second_block()
        allocator.release()  # what is free goes back to the OS: the next block faults in again
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(BLOCK, np.uint8)
        after_release = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del block
    fresh = faults_of_a_second_block()  # after reuse(): large blocks are fresh mappings again
    # (4 KiB pages: 16,384 faults a fresh block; 32 where the kernel backs it with huge pages)
    assert fresh > 10 * reused and after_release > 10 * reused, (reused, after_release, fresh)


def test_unset_changes_nothing(monkeypatch):
    monkeypatch.delenv("NEUROSCOPE_MALLOC", raising=False)
    assert not allocator.active()
    with allocator.reuse():
        fresh = faults_of_a_second_block()
    assert fresh > 10  # still a fresh mapping (see above)
