"""Atomic writes: a file or a whole folder is the old one or the new one, never a mix or a part;
leftovers of a killed run are cleaned up (or put back) on the next write."""
from __future__ import annotations

import os
import threading

import pytest

import lis.atomic as atomic
from lis.atomic import atomic_path, recover, replace_dir, write_text
from lis.errors import DataError


def _folder(path, files: dict):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _contents(path) -> dict:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


OLD = {f"old{k}.txt": "old" for k in range(20)}
NEW = {f"new{k}.txt": "new" for k in range(20)}


@pytest.fixture(params=["exchange", "two_renames"])
def swap_kind(request, monkeypatch):
    """Every test runs with the one-step exchange and with the two-rename fallback."""
    if request.param == "two_renames":
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    return request.param


def test_replace_dir_swaps_the_whole_folder_and_leaves_nothing_behind(tmp_path, swap_kind):
    final = _folder(tmp_path / "out", OLD)
    replace_dir(_folder(tmp_path / "out.tmp", NEW), final)
    assert _contents(final) == NEW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_path_replaces_a_folder_whole(tmp_path, swap_kind):
    _folder(tmp_path / "out", OLD)
    with atomic_path(tmp_path / "out") as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("new")
    assert _contents(tmp_path / "out") == {"a.txt": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_reader_sees_the_old_or_the_new_folder_whole(tmp_path, swap_kind, monkeypatch):
    """A reader lists the folder while it is replaced 60 times: each listing is one whole version
    (the two-rename fallback may show the name missing for an instant; never a mix or a part).
    Replaced folders are kept aside instead of deleted, so a listing that began just before a
    swap is not cut short by the deletion (which a reader holding the old folder open would see)."""
    graveyard = tmp_path / "graveyard"
    graveyard.mkdir()
    monkeypatch.setattr(atomic, "_remove", lambda path: os.replace(path, graveyard / os.urandom(6).hex())
                        if path.exists() else None)
    final = _folder(tmp_path / "out", OLD)
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                seen.append(frozenset(os.listdir(final)))
            except FileNotFoundError:
                seen.append(None)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(60):
            version = NEW if round_ % 2 == 0 else OLD
            replace_dir(_folder(tmp_path / "out.tmp", version), final)
    finally:
        stop.set()
        reader.join()
    wholes = {frozenset(OLD), frozenset(NEW)} | ({None} if swap_kind == "two_renames" else set())
    assert seen and set(seen) <= wholes


def test_a_run_killed_between_the_two_renames_is_put_back_on_the_next_write(tmp_path):
    old = _folder(tmp_path / "out.old-1234abcd", OLD)   # what a kill after `final -> old` leaves
    _folder(tmp_path / "out.tmp", {"half.txt": "half"})  # and the new folder, unfinished
    recover(tmp_path / "out")
    assert _contents(tmp_path / "out") == OLD and not old.exists()
    with atomic_path(tmp_path / "out") as tmp:           # the next write cleans the .tmp too
        _folder(tmp, NEW)
    assert _contents(tmp_path / "out") == NEW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_old_copies_are_deleted_when_the_folder_exists(tmp_path):
    _folder(tmp_path / "out", NEW)
    _folder(tmp_path / "out.old-00000000", OLD)
    recover(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and _contents(tmp_path / "out") == NEW


def test_a_failed_write_keeps_the_old_folder_and_removes_the_temporary(tmp_path, swap_kind):
    _folder(tmp_path / "out", OLD)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out") as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert _contents(tmp_path / "out") == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_written_onto_a_directory_is_a_one_line_error(tmp_path):
    _folder(tmp_path / "out", OLD)
    with pytest.raises(DataError, match="is a directory"):
        write_text(tmp_path / "out", "text")
    assert _contents(tmp_path / "out") == OLD and not (tmp_path / "out.tmp").exists()


def test_names_with_glob_characters_are_recovered_literally(tmp_path):
    _folder(tmp_path / "a[1]", NEW)
    _folder(tmp_path / "a[1].old-ffffffff", OLD)
    _folder(tmp_path / "a1.old-ffffffff", OLD)   # another folder's leftover: not ours to touch
    recover(tmp_path / "a[1]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a1.old-ffffffff", "a[1]"]
