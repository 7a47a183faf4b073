"""``POST /hooks/huggingface``: the Hub pushes a new revision instead of being polled.

A Hugging Face webhook (repo settings → Webhooks, "Repo update" events) sends a JSON payload
and the secret it was configured with in the ``X-Webhook-Secret`` header. The secret is checked
in constant time against ``webhook_secret`` (config file or ``ONRAMP_WEBHOOK_SECRET``); a
``repo.content`` update of a model emits the same ``onramp.model.revision`` event as the
watcher, so the ``onboard`` deployment's trigger starts onboarding. Only repos on the watch list
(``watch_repos``, or a model of one of ``watch_orgs``) are onboarded; an update of any other repo
is answered 200 ``{"status": "ignored", "reason": "not on the watch list"}`` and logged (a Hub
webhook may cover a whole user or org: that is no error of the sender). Other events
(discussions, config changes, datasets, spaces, deletions) are acknowledged and ignored too.

serving's ``build_app`` mounts :data:`router`. The secret comes from ``app.state.settings``
when the app has settings, else from :func:`onramp.settings.load_settings`.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from flows.events import EVENT, Revision, emit_revision_event
from onramp.errors import OnrampError

__all__ = ["router", "HubWebhook", "secret_matches", "revision_from_payload"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["hooks"])


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: str
    scope: str


class _Repo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    name: str
    headSha: str | None = None


class _UpdatedRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ref: str
    newSha: str | None = None


class HubWebhook(BaseModel):
    """The parts of the Hub's webhook payload (version 3) that onramp reads."""

    model_config = ConfigDict(extra="ignore")
    event: _Event
    repo: _Repo
    updatedRefs: list[_UpdatedRef] | None = None


def _error(status: int, what: str, fix: str) -> JSONResponse:
    return JSONResponse({"error": {"message": f"{what} — {fix}", "type": "webhook_error", "code": status}},
                        status_code=status)


def _settings(request: Request):
    settings = getattr(request.app.state, "settings", None)
    if settings is None or not hasattr(settings, "webhook_secret"):
        from onramp.settings import load_settings

        settings = load_settings()
    return settings


def secret_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of the header's secret with the configured one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def revision_from_payload(payload: HubWebhook) -> tuple[str | None, str | None]:
    """``(sha, why_ignored)``: the new head sha of ``main``, or why the event is not a new revision."""
    if payload.repo.type != "model":
        return None, f"repo type {payload.repo.type!r} is not a model"
    if payload.event.scope != "repo.content":
        return None, f"scope {payload.event.scope!r} is not repo.content"
    if payload.event.action != "update":
        return None, f"action {payload.event.action!r} is not update"
    if payload.updatedRefs:
        for ref in payload.updatedRefs:
            if ref.ref == "refs/heads/main" and ref.newSha:
                return ref.newSha, None
        return None, "main was not updated"
    if not payload.repo.headSha:
        return None, "the payload has no repo.headSha"
    return payload.repo.headSha, None


def _inline(schema: dict) -> dict:
    """A pydantic JSON schema with its ``$defs`` substituted (for an inline OpenAPI request body)."""
    defs = schema.pop("$defs", {})

    def sub(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return sub(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: sub(v) for k, v in node.items()}
        return [sub(v) for v in node] if isinstance(node, list) else node

    return sub(schema)


_ERROR_DOC = {"description": "why the webhook was refused", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "object"}}}}}}


@router.post("/hooks/huggingface", status_code=202, responses={
    200: {"description": "not a new model revision: ignored", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"status": {"const": "ignored"}, "reason": {"type": "string"}}}}}},
    401: _ERROR_DOC, 422: _ERROR_DOC, 503: _ERROR_DOC | {"description": "the webhook or Prefect is not configured"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": _inline(HubWebhook.model_json_schema())}}}})
async def huggingface_webhook(request: Request) -> Any:
    """Receive a Hub webhook; emit ``onramp.model.revision`` for a new model revision."""
    settings = _settings(request)
    secret = settings.webhook_secret
    if not secret:
        return _error(503, "the Hugging Face webhook is not configured on this server",
                      "set webhook_secret (config file) or ONRAMP_WEBHOOK_SECRET and restart")
    if not secret_matches(request.headers.get("x-webhook-secret"), secret):
        return _error(401, "bad or missing X-Webhook-Secret",
                      "configure the webhook on the Hub with onramp's webhook_secret")
    try:
        payload = HubWebhook.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(422, f"not a Hugging Face webhook payload: {where}: {first['msg']}",
                      "send the Hub's webhook JSON (event, repo with type, name, headSha)")
    sha, ignored = revision_from_payload(payload)
    if sha is None:
        return JSONResponse({"status": "ignored", "reason": ignored}, status_code=200)
    from flows.watch import WatchList

    try:
        watched = WatchList.from_settings(settings).covers(payload.repo.name)
    except OnrampError as exc:
        return _error(503, exc.what, exc.fix)
    if not watched:
        shown = payload.repo.name[:200].encode("unicode_escape").decode()  # no newlines in the log
        log.info("webhook: ignored %s: not on the watch list", shown)
        return JSONResponse({"status": "ignored", "reason": "not on the watch list"}, status_code=200)

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return _error(503, "no Prefect server to send the event to",
                      "start the services with `onramp up` (or set PREFECT_API_URL)")
    revision = Revision(repo=payload.repo.name, sha=sha, source="webhook")
    event = emit_revision_event(revision)
    try:
        from flows.watch import mark_seen, state_path

        mark_seen(state_path(settings), revision.repo, revision.sha)
    except Exception as exc:  # noqa: BLE001 (the event is out; the seen state is an optimisation)
        log.warning("could not record %s@%s as seen: %s", revision.repo, sha[:12], exc)
    log.info("webhook: new revision %s@%s", revision.repo, sha[:12])
    return {"status": "accepted", "event": EVENT, "event_id": str(event.id) if event else None,
            "repo": revision.repo, "sha": sha}
