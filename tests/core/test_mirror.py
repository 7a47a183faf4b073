import json
import os
import subprocess
import sys
import textwrap

import pytest

from onramp.errors import MirrorError
from onramp.hub import HubError, pull, resolve_revision
from onramp.mirror import MirrorServer, publish
from onramp.reference import HUB_REPO_ID

FETCH = textwrap.dedent("""
    import json, sys
    from huggingface_hub import HfApi, snapshot_download
    from transformers import AutoConfig, AutoTokenizer
    repo = sys.argv[1]
    path = snapshot_download(repo, revision="main")
    tok = AutoTokenizer.from_pretrained(path)
    cfg = AutoConfig.from_pretrained(path)
    sha = HfApi().model_info(repo, revision="main").sha
    print(json.dumps({"sha": sha, "vocab": len(tok), "model_type": cfg.model_type,
                      "chat": bool(tok.chat_template)}))
""")


def fetch_via_hf_endpoint(url, repo, tmp_path):
    env = dict(os.environ, HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf-home"))
    proc = subprocess.run([sys.executable, "-c", FETCH, repo], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_publish_then_snapshot_download_through_hf_endpoint(hub_mirror, reference_model, tmp_path):
    sha1 = publish(HUB_REPO_ID, reference_model, hub_mirror.mirror_dir)
    got = fetch_via_hf_endpoint(hub_mirror.url, HUB_REPO_ID, tmp_path)
    assert got["sha"] == sha1
    assert got["model_type"] == "llama" and got["vocab"] == 49152 and got["chat"]

    sha2 = publish(HUB_REPO_ID, reference_model, hub_mirror.mirror_dir, message="second revision")
    assert sha2 != sha1
    assert fetch_via_hf_endpoint(hub_mirror.url, HUB_REPO_ID, tmp_path)["sha"] == sha2

    # onramp's own Hub code, unchanged, through the same endpoint
    assert resolve_revision(HUB_REPO_ID, "main", endpoint=hub_mirror.url) == sha2
    path, sha = pull(HUB_REPO_ID, "main", endpoint=hub_mirror.url, cache_dir=tmp_path / "hub")
    assert sha == sha2 and (path / "model.safetensors").is_file()


def test_pickled_only_repo_is_refused(hub_mirror, tmp_path):
    ckpt = tmp_path / "pickled"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    publish("onramp-test/pickled", ckpt, hub_mirror.mirror_dir)
    with pytest.raises(HubError, match="pickled"):
        pull("onramp-test/pickled", "main", endpoint=hub_mirror.url, cache_dir=tmp_path / "hub")


def test_unknown_repo_is_clear(hub_mirror):
    with pytest.raises(HubError, match="not found"):
        resolve_revision("nobody/nothing", "main", endpoint=hub_mirror.url)


def test_busy_port_is_one_line(hub_mirror, test_cache, tmp_path):
    other = MirrorServer(tmp_path / "m", port=hub_mirror.port, venv=test_cache / "olah-venv", work_dir=tmp_path / "w")
    with pytest.raises(MirrorError, match=f"port {hub_mirror.port}.*in use"):
        other.start()


def test_mirror_dir_that_is_a_file_is_refused(test_cache, tmp_path):
    from tests.conftest import free_port

    bad = tmp_path / "not-a-dir"
    bad.write_text("x")
    server = MirrorServer(bad, port=free_port(), venv=test_cache / "olah-venv", work_dir=tmp_path / "w")
    with pytest.raises(MirrorError, match="not a directory"):
        server.start()


def test_olah_crashing_at_start_is_reported_quickly(tmp_path):
    """A broken olah install (its entry point dies at once) gives one line with its last words."""
    import time

    from onramp.mirror import OLAH_VERSION
    from tests.conftest import free_port

    venv = tmp_path / "broken-venv"
    (venv / "bin").mkdir(parents=True)
    cli = venv / "bin" / "olah-cli"
    cli.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named olah.server' >&2\nexit 3\n")
    cli.chmod(0o755)
    (venv / f".olah-{OLAH_VERSION}").write_text(OLAH_VERSION)
    server = MirrorServer(tmp_path / "m", port=free_port(), venv=venv, work_dir=tmp_path / "w")
    t0 = time.monotonic()
    with pytest.raises(MirrorError, match="olah exited at start \\(code 3\\): ModuleNotFoundError"):
        server.start()
    assert time.monotonic() - t0 < 10
    assert server.proc is None


def test_publish_refuses_bad_input(tmp_path):
    with pytest.raises(MirrorError, match="does not exist"):
        publish("a/b", tmp_path / "missing", tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MirrorError, match="config.json"):
        publish("a/b", tmp_path / "empty", tmp_path / "m")
    with pytest.raises(MirrorError, match="bad repo id"):
        publish("no-slash", tmp_path / "empty", tmp_path / "m")


def test_cli_publish_prints_sha(tiny_llama, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onramp", "mirror", "publish", "onramp-test/tiny", str(tiny_llama),
                           "--dir", str(tmp_path / "m")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    sha = proc.stdout.strip()
    assert len(sha) == 40 and int(sha, 16) >= 0
