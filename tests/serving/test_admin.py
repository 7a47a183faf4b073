"""Admin hardening over the real int8 OpenVINO engine (in process, httpx's ASGI transport): swaps
load only from the allowed directories, /readyz keeps errors and paths behind the admin key, an
engine directory holding a fifo is refused before it can hang the server, and an engine load
that hangs is bounded by the swap timeout while the old engine keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from onramp.reference import PARIS_QUESTION
from serving.app import ServeConfig, build_app
from serving.auth import create_key
from serving.engines import load_engine
from serving.slots import Slots

MODEL = "smol"
ENGINE_OPTIONS = {"max_num_seqs": 4, "cache_size_gb": 1}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": PARIS_QUESTION}], "temperature": 0,
        "max_tokens": 16}


def link_copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        try:
            os.link(path, dst / path.name)
        except OSError:
            shutil.copy2(path, dst / path.name)
    return dst


class Loader:
    """The real loader (``serving.engines.load_engine``), remembering what it loaded."""

    def __init__(self):
        self.engines: dict[str, object] = {}

    def __call__(self, engine_dir, name, **options):
        engine = load_engine(engine_dir, name, **options)
        self.engines[str(engine_dir)] = engine
        return engine


@pytest.fixture
async def admin_server(tmp_path, ov_int8_engine):
    """(client with the user key, slots, loader, admin key, engines root) with ``smol`` v1 live."""
    root = tmp_path / "engines"
    root.mkdir()
    keys_file = tmp_path / "keys.json"
    user = create_key(keys_file, "alice")
    admin = create_key(keys_file, "ops", admin=True)
    loader = Loader()
    slots = Slots(loader=loader, max_queue=4, engine_options=ENGINE_OPTIONS)
    await slots.swap(MODEL, ov_int8_engine, version="v1")
    app = build_app(ServeConfig(keys_file=keys_file, swap_roots=[root]), slots=slots)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120,
                                 headers={"Authorization": f"Bearer {user}"}) as client:
        yield client, slots, loader, {"Authorization": f"Bearer {admin}"}, root
    await slots.close()


async def test_swap_loads_only_from_allowed_directories(admin_server, ov_int8_engine, tmp_path):
    client, slots, _, admin, root = admin_server
    outside = link_copy(ov_int8_engine, tmp_path / "outside" / "engine")
    (root / "via-link").symlink_to(outside, target_is_directory=True)
    sneaky = link_copy(ov_int8_engine, root / "sneaky")
    (sneaky / "extra.json").symlink_to(tmp_path / "keys.json")  # a file leading out of the root
    refused = {
        str(outside): 403,  # outside every allowed directory
        f"{root}/../outside/engine": 403,  # '..' out of the root
        str(root / "via-link"): 403,  # a symlink inside the root to a directory outside it
        str(sneaky): 403,
        "engines/relative": 400,
    }
    for engine_dir, status in refused.items():
        resp = await client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": engine_dir}, headers=admin)
        assert resp.status_code == status, (engine_dir, resp.text)
        err = resp.json()["error"]
        assert err["param"] == "engine_dir" and str(root) in err["message"], err  # says what is allowed
    assert slots.live(MODEL).version == "v1" and not slots.status()[0].error  # nothing was even tried
    inside = link_copy(ov_int8_engine, root / "good")
    resp = await client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": f"{root}/x/../good"},
                             headers=admin)
    assert resp.status_code == 200, resp.text
    assert resp.json()["engine_dir"] == str(inside.resolve())


async def test_readyz_keeps_errors_and_paths_behind_the_admin_key(admin_server, tmp_path):
    client, _, _, admin, root = admin_server
    broken = root / "broken-engine"
    broken.mkdir()
    (broken / "openvino_model.xml").write_text("<net>not a model</net>")
    resp = await client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": str(broken)}, headers=admin)
    assert resp.status_code == 400 and "broken-engine" in resp.text
    public = await client.get("/readyz", headers={"Authorization": ""})
    assert public.status_code == 200
    assert public.json()["models"] == [{"name": MODEL, "state": "ready"}]
    assert str(tmp_path) not in public.text and "broken-engine" not in public.text
    wrong = await client.get("/readyz", headers={"Authorization": "Bearer wrong"})
    assert wrong.json() == public.json()
    detailed = (await client.get("/readyz", headers=admin)).json()["models"][0]
    assert detailed["state"] == "ready" and "broken-engine" in detailed["error"] and detailed["version"] == "v1"
    assert "broken-engine" in (await client.get("/admin/models", headers=admin)).json()["models"][0]["error"]


async def test_fifo_in_engine_dir_is_refused_before_it_can_hang(admin_server, ov_int8_engine):
    """A fifo where the loader reads an optional file (openvino_genai's Tokenizer opens
    special_tokens_map.json when it exists) blocks that open forever, inside native code holding the
    GIL: the whole server would freeze, beyond any timeout. It is refused before the load starts."""
    client, slots, _, admin, root = admin_server
    hanging = link_copy(ov_int8_engine, root / "hanging")
    os.mkfifo(hanging / "special_tokens_map.json")
    resp = await asyncio.wait_for(client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": str(hanging)},
                                              headers=admin), timeout=120)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "engine_load_failed" and "special_tokens_map.json" in err["message"]
    assert "not a regular file" in err["message"]
    assert slots.live(MODEL).version == "v1"
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


class BlockingLoader(Loader):
    """The real loader, but a load of ``blocked_dir`` first waits for ``release`` (a load stuck in
    I/O that releases the GIL: Python-level reads and hashing, a stalled network filesystem)."""

    def __init__(self, blocked_dir: Path):
        super().__init__()
        self.blocked_dir = str(blocked_dir)
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, engine_dir, name, **options):
        if str(engine_dir) == self.blocked_dir:
            self.entered.set()
            self.release.wait()
        return super().__call__(engine_dir, name, **options)


async def test_hanging_engine_load_times_out_and_old_engine_keeps_serving(admin_server, ov_int8_engine):
    client, slots, loader, admin, root = admin_server
    hanging = link_copy(ov_int8_engine, root / "hanging")
    blocking = BlockingLoader(hanging.resolve())
    slots._loader = blocking  # the boundary: Slots(loader=...) is how an engine gets loaded
    slots.swap_timeout_s = 20  # long enough for a chat request on a loaded machine
    try:
        swap = asyncio.ensure_future(client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": str(hanging)},
                                                 headers=admin))
        await asyncio.to_thread(blocking.entered.wait, 120)
        # while the load hangs, the old engine answers
        reply = await client.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200 and "Paris" in reply.json()["choices"][0]["message"]["content"]
        assert not swap.done()
        resp = await asyncio.wait_for(swap, timeout=300)
        assert resp.status_code == 504, resp.text
        err = resp.json()["error"]
        assert err["code"] == "engine_load_timeout" and err["param"] == "engine_dir"
        assert str(hanging) in err["message"] and "20 s" in err["message"] and "--swap-timeout" in err["message"]
        assert slots.live(MODEL).version == "v1"
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert f'onramp_swap_failures_total{{model="{MODEL}"}} 1.0' in metrics
        detail = (await client.get("/readyz", headers=admin)).json()["models"][0]
        assert detail["state"] == "ready" and "did not finish within" in detail["error"]
        # the hung load, once it finishes, is closed, never served
        blocking.release.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 300
        while str(hanging) not in blocking.engines or not blocking.engines[str(hanging)]._closed:
            assert loop.time() < deadline, "the late engine was not closed"
            await asyncio.sleep(0.1)
        assert slots.live(MODEL).version == "v1"
        # and the slot takes the next swap
        slots.swap_timeout_s = 600  # a real load takes 10 s and more on a loaded machine
        good = link_copy(ov_int8_engine, root / "good")
        resp = await client.post(f"/admin/models/{MODEL}/swap", json={"engine_dir": str(good), "version": "v2"},
                                 headers=admin)
        assert resp.status_code == 200 and slots.live(MODEL).version == "v2"
    finally:
        blocking.release.set()
