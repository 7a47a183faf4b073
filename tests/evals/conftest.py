"""evals' fixtures: a deliberately broken engine, and the real server on the real int8 engine."""

from __future__ import annotations

import os
import random
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.process import run_onramp_serve

SERVED = "smollm2-int8"


def corrupt_largest_int8_tensor(engine_dir: Path, seed: int = 0) -> str:
    """Overwrite the bytes of the IR's largest 8-bit weight constant with random values; return its name.

    nncf's int8 weight compression stores weights as u8 (asymmetric) or i8 constants; the largest
    is the token embedding, tied to the output head.
    """
    root = ET.parse(engine_dir / "openvino_model.xml").getroot()
    consts = [(int(d.get("size")), int(d.get("offset")), layer.get("name"))
              for layer in root.iter("layer") if layer.get("type") == "Const"
              for d in layer.iter("data") if d.get("element_type") in ("u8", "i8")]
    size, offset, name = max(consts)
    rng = random.Random(seed)
    with open(engine_dir / "openvino_model.bin", "r+b") as fh:
        fh.seek(offset)
        fh.write(rng.randbytes(size))
    return name


@pytest.fixture(scope="session")
def broken_engine(ov_int8_engine, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the int8 engine whose largest weight tensor (the tied embedding) is random noise.

    Its manifest is rewritten with the new checksums: this is a build that *finished* with bad
    weights, which only the quality gate can catch.
    """
    from builders.manifest import hash_files, read_manifest, write_manifest

    dst = tmp_path_factory.mktemp("broken") / "engine"
    dst.mkdir()
    for src in ov_int8_engine.iterdir():
        if src.name == "openvino_model.bin":
            shutil.copyfile(src, dst / src.name)  # a real copy: the original must stay intact
        elif src.is_file():
            try:
                os.link(src, dst / src.name)
            except OSError:  # another file system
                shutil.copy2(src, dst / src.name)
    tensor = corrupt_largest_int8_tensor(dst)
    manifest = read_manifest(ov_int8_engine)
    write_manifest(dst, manifest.model_copy(update={"files": hash_files(dst)}))
    return dst, tensor


@pytest.fixture(scope="session")
def served_int8(ov_int8_engine, tmp_path_factory):
    """`onramp serve` in a subprocess on a free loopback port, auth on, serving the int8 engine."""
    from serving.auth import create_key

    home = tmp_path_factory.mktemp("evals-serve")
    keys_file = home / "keys.json"
    key = create_key(keys_file, "evals")
    env = {**os.environ, "ONRAMP_HOME": str(home)}
    with run_onramp_serve(["--engine", f"{SERVED}={ov_int8_engine}", "--keys-file", str(keys_file)],
                          log=home / "server.log", env=env) as server:
        yield Served(url=server.url, key=key)


@dataclass
class Served:
    url: str
    key: str
