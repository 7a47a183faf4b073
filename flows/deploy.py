"""Deployments and work pools, defined in code.

- work pool ``cpu`` (process): the ``onboard`` and ``watch`` deployments run here; ``onramp up``
  starts one worker for it;
- work pool ``gpu`` (process): the ``build-layout`` deployment (one flow run per TensorRT-LLM
  layout; the onboard flow sends every GPU layout here, see :mod:`flows.dispatch`) for GPU
  workers (``prefect worker start --pool gpu`` on a GPU node with TensorRT-LLM; on Kubernetes a
  ``kubernetes`` pool with deploy/prefect/gpu-pool-base-job-template.json; nothing starts one here);
- ``onboard`` has a trigger on the ``onramp.model.revision`` event: its parameters come from
  the event's payload (repo and sha), the rest from the settings at deploy time;
- ``watch`` runs every ``watch_interval_s`` seconds.

``python -m flows.deploy`` (what ``onramp up`` runs, with ``PREFECT_API_URL`` set) creates the
pools and deployments from the local checkout (no image, no remote storage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.events import EVENT
from onramp.settings import Settings

__all__ = ["REPO_ROOT", "CPU_POOL", "GPU_POOL", "ONBOARD", "WATCH", "BUILD_LAYOUT", "onboard_trigger_parameters",
           "onboard_trigger", "ensure_work_pools", "deploy_all", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU_POOL, GPU_POOL = "cpu", "gpu"
ONBOARD, WATCH, BUILD_LAYOUT = "onboard", "watch", "build-layout"


def onboard_trigger_parameters(settings: Settings, targets: list[str] | None = None,
                               profile: str = "quick") -> dict[str, Any]:
    """The onboard deployment's parameters, templated from the event (Prefect renders the Jinja)."""
    return {"config": {"repo": "{{ event.payload.repo }}", "revision": "{{ event.payload.sha }}",
                       "targets": targets or ["cpu"], "profile": profile}}


def onboard_trigger(settings: Settings, targets: list[str] | None = None, profile: str = "quick"):
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="onboard-new-revisions",
        description="A new revision of a watched Hub repo (watcher or webhook) starts its onboarding.",
        expect={EVENT},
        match={"prefect.resource.id": "huggingface.model.*"},
        parameters=onboard_trigger_parameters(settings, targets, profile),
    )


def ensure_work_pools() -> None:
    """Create the ``cpu`` and ``gpu`` process work pools if they do not exist."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async def create() -> None:
        async with get_client() as client:
            for name, description in ((CPU_POOL, "onboarding and watching: CPU builds (OpenVINO), evals, registry"),
                                      (GPU_POOL, "TensorRT-LLM builds, one flow run per layout, on GPU workers")):
                try:
                    await client.create_work_pool(WorkPoolCreate(name=name, type="process", description=description))
                except ObjectAlreadyExists:
                    pass

    asyncio.run(create())


def deploy_all(settings: Settings, targets: list[str] | None = None, profile: str = "quick",
               only: tuple[str, ...] | None = None) -> list[str]:
    """Create the pools and the three deployments (from this checkout), or those named in ``only``;
    return the deployment ids.

    ``RunnerDeployment.apply`` rather than ``Flow.deploy``: the latter asks the server for online
    workers with a request Prefect 3.8.8's own server refuses (``limit: null`` → 422).
    """
    from prefect import flow

    ensure_work_pools()
    source = str(REPO_ROOT)
    specs = [
        ("flows/onboard.py:onboard", dict(
            name=ONBOARD, work_pool_name=CPU_POOL, triggers=[onboard_trigger(settings, targets, profile)],
            description="Onboard one revision of a Hub model: build, evaluate, gate, register, promote.")),
        ("flows/watch.py:watch", dict(
            name=WATCH, work_pool_name=CPU_POOL, interval=settings.watch_interval_s,
            description="Poll the Hub for new revisions of the watch list.")),
        ("flows/build.py:build_layout", dict(
            name=BUILD_LAYOUT, work_pool_name=GPU_POOL, description="Build one TensorRT-LLM layout on a GPU worker.")),
    ]
    ids = []
    for entrypoint, kwargs in specs:
        if only is not None and kwargs["name"] not in only:
            continue
        deployment = flow.from_source(source=source, entrypoint=entrypoint).to_deployment(tags=["onramp"], **kwargs)
        ids.append(str(deployment.apply(work_pool_name=kwargs["work_pool_name"])))
    return ids


def main() -> None:
    from onramp.settings import load_settings

    settings = load_settings()
    ids = deploy_all(settings)
    print(f"deployed {ONBOARD}, {WATCH}, {BUILD_LAYOUT} ({', '.join(ids)}) to pools {CPU_POOL}, {GPU_POOL}")


if __name__ == "__main__":
    main()
