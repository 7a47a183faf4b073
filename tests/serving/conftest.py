"""serving's end-to-end fixtures: the real int8 OpenVINO engine, loaded once per session, and
the real server (`onramp serve` in a subprocess on a free loopback port)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serving.process import ServerProcess, run_onramp_serve

# the two served names are the seeds' own model names, so their curl and Python examples run verbatim
LAUNCH_MODEL = "mistral-7b-instruct"  # pplx-api launch post (curl + Python example)
WIRE_MODEL = "llama-3.1-sonar-small-128k-online"  # pplx-api wire-format document (streaming curl)
MAX_QUEUE = 10


@pytest.fixture(scope="session")
def ov_engine(ov_int8_engine):
    """The real engine in-process (for engine-level tests), loaded once."""
    from serving.engines import load_engine

    engine = load_engine(ov_int8_engine, name="smollm2", max_num_seqs=16)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def engine_copy(ov_int8_engine, tmp_path_factory) -> Path:
    """A second engine directory (hard links of the first) to swap to."""
    dst = tmp_path_factory.mktemp("swap") / ov_int8_engine.name
    dst.mkdir()
    for src in ov_int8_engine.rglob("*"):
        rel = src.relative_to(ov_int8_engine)
        if src.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        else:
            try:
                os.link(src, dst / rel)
            except OSError:
                import shutil

                shutil.copy2(src, dst / rel)
    return dst


@dataclass
class Server:
    url: str
    key: str
    admin_key: str
    process: ServerProcess

    def client(self, key: str | None = None, **kw) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=120,
                                 headers={"Authorization": f"Bearer {key or self.key}"}, **kw)

    def log_text(self) -> str:
        return self.process.log_text()


@pytest.fixture(scope="session")
def server(ov_int8_engine, engine_copy, tmp_path_factory):
    from serving.auth import create_key

    home = tmp_path_factory.mktemp("serve-home")
    keys_file = home / "keys.json"
    key = create_key(keys_file, "tests")
    admin_key = create_key(keys_file, "ops", admin=True)
    # swaps may load from the engines dir: the one holding engine_copy
    env = {**os.environ, "ONRAMP_HOME": str(home), "ONRAMP_API_KEYS": "", "ONRAMP_ENGINES_DIR": str(engine_copy.parent)}
    args = ["--engine", f"{LAUNCH_MODEL}={ov_int8_engine}", "--engine", f"{WIRE_MODEL}={ov_int8_engine}",
            "--keys-file", str(keys_file), "--max-queue", str(MAX_QUEUE), "--default-max-tokens", "96"]
    with run_onramp_serve(args, log=home / "server.log", env=env) as process:
        yield Server(url=process.url, key=key, admin_key=admin_key, process=process)
