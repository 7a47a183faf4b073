"""kill -9 of a worker in the middle of a real OpenVINO build (tiny Llama): nothing half-made is
ever taken for an engine, and the next run builds it whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders import build_engine
from builders.build import finished_build
from builders.manifest import read_manifest, verify_files

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from pathlib import Path
import pytest

from builders import build_engine
build_engine(Path(sys.argv[1]), backend="openvino", quant="int8", out_root=Path(sys.argv[2]))
"""


@pytest.mark.slow
def test_kill_9_mid_build_then_the_next_run_builds_it_whole(tiny_llama, tmp_path):
    out = tmp_path / "engines"
    log = tmp_path / "child.log"
    # the worker and its export subprocess in their own process group, killed together (as a
    # killed container or an OOM-killed worker would be)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_llama), str(out)], cwd=REPO_ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob(".tmp-*")):  # the build started writing its temp dir
            assert proc.poll() is None, f"the build ended (rc {proc.returncode}) before it was killed:\n" \
                                        f"{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert list(out.glob(".tmp-*")), "the kill came after the build finished"
    # nothing at an engine's path: what is left is only the temp dir, never taken for a build
    assert [p for p in out.iterdir() if not p.name.startswith(".")] == []

    engine = build_engine(tiny_llama, backend="openvino", quant="int8", out_root=out)
    manifest = read_manifest(engine)
    verify_files(engine, manifest)
    assert finished_build(engine, manifest.build_id) is not None
    assert (engine / "openvino_model.xml").is_file() and (engine / "openvino_model.bin").is_file()
    assert not list(out.glob(".tmp-*"))  # the dead build's temp dir was cleaned up
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == [engine.name]
