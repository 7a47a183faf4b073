"""onramp.files.write_text_atomic: many writers at once, in threads, never leave a torn file."""

from __future__ import annotations

import threading

from onramp.files import write_text_atomic


def test_concurrent_writers_in_threads_leave_one_whole_file(tmp_path):
    target = tmp_path / "sub" / "memo.json"
    errors = []

    def writer(i: int) -> None:
        try:
            for _ in range(50):
                write_text_atomic(target, str(i) * 1000)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    text = target.read_text()
    assert len(text) == 1000 and len(set(text)) == 1  # one writer's whole content
    assert [p.name for p in target.parent.iterdir()] == ["memo.json"]  # no temp files left


def test_mode_is_set_before_the_file_appears(tmp_path):
    target = tmp_path / "shared.txt"
    write_text_atomic(target, "a", mode=0o640)
    assert target.stat().st_mode & 0o777 == 0o640
    target.chmod(0o644)  # an older, world-readable file is replaced by a private one
    write_text_atomic(target, "b", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600 and target.read_text() == "b"


def test_default_mode_follows_the_umask_as_open_would(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o640


def test_json_and_bytes_writers(tmp_path):
    import json

    from onramp.files import write_bytes_atomic, write_json_atomic

    path = write_json_atomic(tmp_path / "d" / "x.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    write_bytes_atomic(tmp_path / "d" / "x.bin", b"\x00\x01")
    assert (tmp_path / "d" / "x.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.bin", "x.json"]


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path):
    import pytest

    from onramp.files import atomic_path

    target = tmp_path / "plots" / "plot.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers still see the old file
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["plot.png"]  # no temp file left
