"""Usage per API key against a real `onramp serve` (int8 OpenVINO engine): counted by key name,
limited per key (429 with Retry-After), shown by `onramp keys list`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI, RateLimitError

from serving.process import run_onramp_serve

pytestmark = pytest.mark.slow
MODEL = "m"
Q = [{"role": "user", "content": "Name a color."}]


@pytest.fixture(scope="module")
def limited_server(ov_int8_engine, tmp_path_factory):
    from serving.auth import create_key

    home = tmp_path_factory.mktemp("usage-home")
    keys_file = home / "keys.json"
    keys = {"limited": create_key(keys_file, "limited", tpm=40), "free": create_key(keys_file, "free")}
    env = {**os.environ, "ONRAMP_HOME": str(home), "ONRAMP_API_KEYS": ""}
    with run_onramp_serve(["--engine", f"{MODEL}={ov_int8_engine}", "--keys-file", str(keys_file)],
                          log=home / "server.log", env=env) as process:
        yield process, keys, keys_file


def test_key_over_its_token_limit_gets_429_others_do_not(limited_server):
    process, keys, keys_file = limited_server
    limited = OpenAI(api_key=keys["limited"], base_url=f"{process.url}/v1", max_retries=0, timeout=300)
    free = OpenAI(api_key=keys["free"], base_url=f"{process.url}/v1", max_retries=0, timeout=300)
    first = limited.chat.completions.create(model=MODEL, messages=Q, max_tokens=10, temperature=0)
    assert first.usage.total_tokens >= 40  # the system prompt alone is ~30 tokens: the key is at its limit
    with pytest.raises(RateLimitError) as err:
        limited.chat.completions.create(model=MODEL, messages=Q, max_tokens=10, temperature=0)
    retry_after = int(err.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert err.value.body["code"] == "rate_limit_exceeded" and "limited" in err.value.body["message"]
    for _ in range(2):  # another key is not affected
        assert free.chat.completions.create(model=MODEL, messages=Q, max_tokens=10, temperature=0).choices



    text = httpx.get(f"{process.url}/metrics", timeout=30).text
    assert 'onramp_key_requests_total{key="free"} 2.0' in text
    assert 'onramp_key_requests_total{key="limited"} 1.0' in text  # the refused one is not admitted
    assert keys["limited"] not in text and keys["free"] not in text

    # `onramp keys list` shows the usage (written within a second)
    env = {**os.environ, "ONRAMP_KEYS_FILE": str(keys_file)}
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run([sys.executable, "-m", "onramp", "keys", "list", "--keys-file", str(keys_file)],
                             capture_output=True, text=True, env=env, timeout=120).stdout
        rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()[1:]}
        if rows.get("free", [""] * 5)[4] == "2" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rows["free"][4] == "2" and int(rows["free"][6]) > 0
    assert rows["limited"][3] == "40" and rows["limited"][4] == "1"
    assert keys["free"] not in out
