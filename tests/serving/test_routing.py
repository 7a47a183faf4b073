"""Canary routing inside one app: the pick by weight and user, and a failed canary never unreadies a replica."""

from __future__ import annotations

import httpx

from serving.app import ServeConfig, build_app
from serving.engines import load_engine
from serving.routing import Router, bucket, canary_slot
from serving.slots import Slots, SwapFailed
from tests.serving.test_http import ENGINE_OPTIONS


async def test_router_picks_by_weight_and_a_failed_canary_keeps_readyz(ov_int8_engine, tmp_path):
    slots = Slots(loader=load_engine, engine_options=ENGINE_OPTIONS)
    app = build_app(ServeConfig(auth=False), slots=slots)
    router = Router()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await slots.swap("m", ov_int8_engine, version="1")
        router.weights["m"] = 50
        assert router.pick(slots, "m", "anyone") == "m"  # no canary loaded: production
        (tmp_path / "broken").mkdir()
        try:
            await slots.swap(canary_slot("m"), tmp_path / "broken", version="2")
        except SwapFailed:
            pass
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text  # the failed canary is reported, not blocking
        assert any(m["name"] == "m@canary" and m["state"] == "failed" for m in ready.json()["models"])
        slots.forget_failure(canary_slot("m"))
        assert "m@canary" not in (await client.get("/readyz")).text
        await slots.swap(canary_slot("m"), ov_int8_engine, version="2")
        users = [f"u{i}" for i in range(40)]
        picks = {u: router.pick(slots, "m", u) for u in users}
        assert picks == {u: "m@canary" if bucket(u) < 50 else "m" for u in users}
        assert set(picks.values()) == {"m", "m@canary"}
        router.weights["m"] = 0
        assert {router.pick(slots, "m", u) for u in users} == {"m"}
    await slots.close()


async def test_a_replica_with_only_its_canary_live_is_not_ready_and_a_fetch_in_flight_is_503(ov_int8_engine):
    """The canary follower may load the canary before production has arrived from the registry:
    /readyz stays 503 until production is live, and a request for a model on its way is a 503
    ``model_loading`` with Retry-After (never a 404 "does not exist")."""
    slots = Slots(loader=load_engine, engine_options=ENGINE_OPTIONS)
    app = build_app(ServeConfig(auth=False), slots=slots)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await slots.swap(canary_slot("m"), ov_int8_engine, version="2")
        slots.pending("m", "registry version 1 (fetching)")
        ready = await client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert {m["name"]: m["state"] for m in ready.json()["models"]} == {"m": "loading", "m@canary": "ready"}
        body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading", r.text
        assert r.headers["retry-after"] == "5"
        slots.pending_failed("m", "version 1: checksum mismatch")
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable", r.text
        assert "checksum mismatch" in r.json()["error"]["message"]
        assert (await client.get("/readyz")).status_code == 503
        await slots.swap("m", ov_int8_engine, version="1")
        assert (await client.get("/readyz")).status_code == 200
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
    await slots.close()
