"""Shared fixtures.

- ``onramp_home`` (autouse): every test gets its own ONRAMP_HOME; nothing leaks between tests
  or into the user's ~/.onramp.
- ``TEST_CACHE``: expensive artifacts (the reference model, built engines, olah's venv) live
  in one cache dir reused across tests and runs: $ONRAMP_TEST_CACHE, default .cache/test in
  the repo.
- ``reference_model`` (session): the real SmolLM2-135M-Instruct checkpoint.
- ``tiny_llama`` (session): a tiny random Llama (safetensors + the reference tokenizer) for
  fast unit tests.
- ``hub_mirror`` (session): olah on a free loopback port serving a fresh mirror dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onramp.process import free_port  # noqa: F401 - tests import it from here

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_CACHE = Path(os.environ.get("ONRAMP_TEST_CACHE") or REPO_ROOT / ".cache" / "test").resolve()


def descendants(pid: int) -> list:
    """The processes ``pid`` started, and theirs (psutil.Process objects)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def left_running(procs: list, timeout: float = 90.0) -> list:
    """Wait (event-driven, up to a generous ``timeout``) until every process in ``procs`` has
    exited; return those still running (zombies count as exited)."""
    import psutil

    def running(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    _, alive = psutil.wait_procs([p for p in procs if running(p)], timeout=timeout)
    return [p for p in alive if running(p)]


def kill_all(procs: list) -> None:
    """Clean-up of a failed test: SIGKILL what is left."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(autouse=True)
def onramp_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "onramp-home"
    home.mkdir()
    monkeypatch.setenv("ONRAMP_HOME", str(home))
    monkeypatch.setenv("ONRAMP_CACHE_DIR", str(TEST_CACHE))
    monkeypatch.delenv("ONRAMP_CONFIG", raising=False)
    monkeypatch.setenv("ONRAMP_TUNE_BUDGET_S", "0")  # the onboard flow's tune step: off unless a test turns it on
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    return home


@pytest.fixture(scope="session")
def test_cache() -> Path:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_CACHE


@pytest.fixture(scope="session")
def reference_model(test_cache) -> Path:
    from onramp.reference import make_reference_model

    return make_reference_model(cache_dir=test_cache)


@pytest.fixture(scope="session")
def tiny_llama(test_cache, reference_model) -> Path:
    """A 2-layer random Llama with the reference tokenizer and chat template (~1 MB)."""
    out = test_cache / "tiny-llama"
    if (out / "model.safetensors").is_file():
        return out
    import shutil
    import tempfile

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(reference_model)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = Path(tempfile.mkdtemp(dir=test_cache, prefix=".tiny-llama."))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


@pytest.fixture(scope="session")
def hub_mirror(test_cache, tmp_path_factory):
    """olah on loopback serving an empty mirror dir; yields the MirrorServer."""
    from onramp.mirror import MirrorServer

    work = tmp_path_factory.mktemp("mirror")
    server = MirrorServer(work / "repos", port=free_port(), venv=test_cache / "olah-venv", work_dir=work / "olah")
    server.mirror_dir.mkdir(parents=True)
    with server:
        yield server


@pytest.fixture(scope="session")
def ov_int8_engine(test_cache, reference_model) -> Path:
    """The reference model built to an int8 OpenVINO engine (builders), cached under engines/.

    The first run exports it (~30 s on an idle 2-core machine, minutes under load); later runs
    find the finished build by its build id and return it after checking its sha256s (~2 s).
    """
    from builders import build_engine
    from onramp.reference import HUB_REPO_ID

    return build_engine(reference_model, backend="openvino", quant="int8",
                        out_root=test_cache / "engines", repo=HUB_REPO_ID)


@pytest.fixture(scope="session")
def ov_int4_engine(test_cache, reference_model) -> Path:
    """The reference model built to an int4 OpenVINO engine (4-bit weights in groups chosen per
    model: 64 for SmolLM2-135M), cached under engines/ like ``ov_int8_engine``."""
    from builders import build_engine
    from onramp.reference import HUB_REPO_ID

    return build_engine(reference_model, backend="openvino", quant="int4",
                        out_root=test_cache / "engines", repo=HUB_REPO_ID)
