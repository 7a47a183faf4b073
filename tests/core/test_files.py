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
