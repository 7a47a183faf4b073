"""The one event of onramp's pipeline: ``onramp.model.revision`` (a new revision of a Hub repo).

The watcher (polling) and the webhook (the Hub pushing) emit it; the ``onboard``
deployment's trigger turns it into a flow run with the repo and sha from its payload.
Prefect is imported only when an event is emitted.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["EVENT", "Revision", "resource_id", "emit_revision_event"]

EVENT = "onramp.model.revision"


class Revision(BaseModel):
    """A new revision of a Hub repo: what the event carries in its payload."""

    model_config = ConfigDict(extra="forbid")

    repo: str
    sha: str
    previous: str | None = None
    source: str = "poll"  # "poll" or "webhook"


def resource_id(repo: str) -> str:
    return f"huggingface.model.{repo}"


def emit_revision_event(revision: Revision):
    """Emit the event; returns Prefect's ``Event`` (None where Prefect emits no events)."""
    from prefect.events import emit_event

    return emit_event(
        event=EVENT,
        resource={"prefect.resource.id": resource_id(revision.repo), "prefect.resource.name": revision.repo},
        payload=revision.model_dump(),
    )
