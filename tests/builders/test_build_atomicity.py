"""build_engine's guarantees, with small backends registered through the public seam
(``register_backend``): builds are atomic, failures leave nothing, concurrent requests build once.

The real OpenVINO backend is covered end to end in test_openvino_build.py; these backends
write a few bytes so the properties of the build machinery can be checked in milliseconds.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path

import pytest

from builders import build_engine, read_manifest, register_backend
from builders.manifest import Layout

CALLS: list[str] = []


class _Small:
    name = "small"
    fail = False
    delay = 0.0

    def version(self):
        return "1.0"

    def toolchain(self):
        return {"small": "1.0"}

    def default_layout(self, facts, quant):
        return Layout(hardware="cpu", dtype=facts.dtype, quantization=quant)

    def check_available(self):
        pass

    def build(self, checkpoint, out_dir, layout, facts, log_path):
        CALLS.append(str(out_dir))
        (Path(out_dir) / "weights.bin").write_bytes(b"w" * 1000)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the backend crashed half-way")
        (Path(out_dir) / "config.json").write_text("{}")


class _Failing(_Small):
    name = "small-failing"
    fail = True


class _Slow(_Small):
    name = "small-slow"
    delay = 1.0


@pytest.fixture(autouse=True)
def small_backends():
    module = types.ModuleType("_onramp_test_backends")
    module.Small, module.Failing, module.Slow = _Small, _Failing, _Slow
    sys.modules[module.__name__] = module
    for name, attr in (("small", "Small"), ("small-failing", "Failing"), ("small-slow", "Slow")):
        register_backend(name, f"{module.__name__}:{attr}")
    CALLS.clear()
    yield
    from builders import backends

    for name in ("small", "small-failing", "small-slow"):
        backends._REGISTRY.pop(name, None)
        backends._LOADED.pop(name, None)
    sys.modules.pop(module.__name__, None)


def test_a_failed_build_leaves_nothing_behind(tiny_llama, tmp_path):
    out = tmp_path / "engines"
    with pytest.raises(RuntimeError, match="half-way"):
        build_engine(tiny_llama, backend="small-failing", quant="int8", out_root=out)
    assert len(CALLS) == 1 and not Path(CALLS[0]).exists()  # its temp dir is gone
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    assert not list(out.glob(".tmp-*"))


def test_a_directory_without_a_valid_manifest_is_never_taken_for_a_build(tiny_llama, tmp_path):
    out = tmp_path / "engines"
    engine = build_engine(tiny_llama, backend="small", quant="int8", out_root=out)
    first = read_manifest(engine)
    (engine / "manifest.json").unlink()  # as if the build had died before its last step
    again = build_engine(tiny_llama, backend="small", quant="int8", out_root=out)
    assert again == engine and len(CALLS) == 2  # rebuilt, not returned half-made
    assert read_manifest(again).created != first.created
    (again / "weights.bin").write_bytes(b"x" * 1000)  # corrupted after the fact
    build_engine(tiny_llama, backend="small", quant="int8", out_root=out)
    assert len(CALLS) == 3


def test_a_layout_change_is_a_different_build(tiny_llama, tmp_path):
    out = tmp_path / "engines"
    a = build_engine(tiny_llama, backend="small", quant="int8", out_root=out)
    b = build_engine(tiny_llama, backend="small", quant="int4", out_root=out)
    assert a != b and read_manifest(a).build_id != read_manifest(b).build_id
    assert build_engine(tiny_llama, backend="small", quant="int8", out_root=out) == a and len(CALLS) == 2


def test_concurrent_requests_build_once(tiny_llama, tmp_path):
    out = tmp_path / "engines"
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        build_engine(tiny_llama, backend="small-slow", quant="int8", out_root=out))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert len(CALLS) == 1  # the second waited on the lock and found the first's build
