"""The one atomic writer: whole files or none, unique temporary names, no leftovers."""

from __future__ import annotations

import threading

import pytest

from geomlab import io


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    io.atomic_write_text(target, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        io.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_temporary_names_are_unique_so_concurrent_writers_never_collide(tmp_path):
    target = tmp_path / "model.pt"
    seen: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def write(tmp):
        seen.append(tmp.name)
        barrier.wait(timeout=10)  # all four temporary files exist at once
        tmp.write_bytes(tmp.name.encode())

    def worker():
        try:
            io.atomic_write(target, write)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(seen)) == 4 and all(name.startswith(".model.pt.") for name in seen)
    assert target.read_bytes().decode() in seen  # one whole file won
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
