"""The ``rollout`` flow: :func:`evals.rollout.rollout` with each step and the decision as Prefect artifacts."""

from __future__ import annotations

import json

from prefect import flow
from prefect.artifacts import create_markdown_artifact

__all__ = ["rollout_flow"]


def _markdown(kind: str, data: dict) -> str:
    return f"### rollout {kind}\n\n```json\n{json.dumps(data, indent=2, default=str)}\n```\n"


@flow(name="rollout")
def rollout_flow(name: str, version: str, steps: list[float] | None = None, window_s: float = 600.0,
                 servers: list[str] | None = None, gates: str | None = None,
                 shadow: float | None = None) -> dict:
    """Canary ``version`` of ``name`` through ``steps``; promote or roll back (see evals.rollout)."""
    from evals.gates import load_gates
    from evals.rollout import rollout
    from registry.client import Registry

    def report(kind: str, data: dict) -> None:
        create_markdown_artifact(key=f"rollout-{kind}", markdown=_markdown(kind, data),
                                 description=f"{name} v{version} rollout {kind}")

    result = rollout(Registry(), name, version, steps=steps or [5, 25, 100], window=window_s,
                     servers=servers or [], rules=load_gates(gates).rollout, report=report, shadow=shadow)
    return {"decision": result.decision, "metric": result.metric, "steps": result.steps}
