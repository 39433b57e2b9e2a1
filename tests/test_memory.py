"""The server's allocator settings: applied on glibc, harmless elsewhere."""
import ctypes.util

import pytest

from hpm import memory

GLIBC = memory._glibc() is not None


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_on_glibc_the_arenas_are_capped_and_free_pages_are_trimmed_by_a_daemon_thread():
    assert memory.limit_arenas(2) is True and memory.unmap_above(128 * 1024) is True
    assert isinstance(memory.trim(), bool)
    thread = memory.trim_every(3600)
    assert thread is not None and thread.daemon and thread.is_alive()


def test_without_glibc_nothing_is_changed_and_nothing_is_started(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    memory._glibc.cache_clear()
    monkeypatch.setattr(memory, "_glibc", memory._glibc.__wrapped__)
    assert memory.limit_arenas(2) is False and memory.trim() is False and memory.trim_every(1) is None
    assert memory.unmap_above(1 << 17) is False
