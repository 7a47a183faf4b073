"""GPU layouts are built on the ``gpu`` work pool, not where the onboard run happens to be.

The onboard flow hands each GPU layout to :func:`build_on_gpu_pool`: a run of the
``build-layout`` deployment (``run_deployment``, a subflow of the onboard run) that a worker of
the ``gpu`` pool picks up on a GPU node. That run builds the layout there and publishes the engine
to the registry (:func:`publish_build`: registered with ``gate=pending``, tagged with its flow run
id); the onboard run then fetches it through the registry (verified, like any version) and
evaluates, gates and registers it as usual (registration finds the version by its build id and
sets its gate). CPU layouts stay in-process.

Without the deployment (Prefect's ephemeral API, no ``onramp up``) a GPU layout is built
in-process as before; with the deployment but no worker polling the pool, the layout fails at
once as ``unavailable`` rather than waiting for a worker that may never come.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flows.errors import OnboardError
from builders.targets import TargetLayout
from onramp.settings import Settings

__all__ = ["FLOW_RUN_TAG", "PENDING", "build_layout_deployment", "build_on_gpu_pool", "publish_build",
           "fetch_published"]

log = logging.getLogger(__name__)

FLOW_RUN_TAG = "build_flow_run"  # model-version tag: the build-layout flow run that published it
PENDING = "pending"  # the gate tag of a published build that the onboard run has not judged yet


def build_layout_deployment() -> str:
    from flows.deploy import BUILD_LAYOUT

    return f"{BUILD_LAYOUT}/{BUILD_LAYOUT}"  # flow name / deployment name


def _pool_state() -> tuple[bool, bool, set[str]]:
    """On the current Prefect API: whether the build-layout deployment exists, whether a worker
    polls its pool, and the job variables the pool's base job template declares."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkPoolStatus
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.deploy import GPU_POOL

    async def read() -> tuple[bool, bool, set[str]]:
        async with get_client() as client:
            try:
                deployment = await client.read_deployment_by_name(build_layout_deployment())
            except ObjectNotFound:
                return False, False, set()
            pool = await client.read_work_pool(deployment.work_pool_name or GPU_POOL)
            variables = set((pool.base_job_template or {}).get("variables", {}).get("properties", {}))
            return True, pool.status == WorkPoolStatus.READY, variables

    return run_coro_as_sync(read())


def build_on_gpu_pool(layout: TargetLayout, repo: str, sha: str, settings: Settings, *,
                      timeout: float) -> Path | None:
    """Build ``layout`` of ``repo@sha`` as a ``build-layout`` run on the gpu pool and return the
    engine, fetched through the registry; None when there is no such deployment (build in-process)."""
    from prefect.deployments import run_deployment

    from flows.deploy import GPU_POOL

    exists, ready, variables = _pool_state()
    if not exists:
        log.warning("no %s deployment on this Prefect API (`onramp up` creates it): building %s in-process",
                    build_layout_deployment(), layout.key)
        return None
    if not ready:
        raise OnboardError(f"unavailable: no worker polls the {GPU_POOL!r} work pool, so {layout.key} cannot be built",
                           f"start one on a GPU node (`prefect worker start --pool {GPU_POOL}`, or the Kubernetes "
                           "worker in deploy/), then onboard again")
    # a pool whose job template asks for GPUs (deploy/prefect/gpu-pool-base-job-template.json) gets
    # as many as the layout's tensor-parallel size
    job_variables = {"gpu_count": layout.tp} if "gpu_count" in variables else None
    run = run_deployment(build_layout_deployment(), parameters={"repo": repo, "revision": sha,
                                                                "layout": layout.model_dump(mode="json")},
                         timeout=timeout, poll_interval=2, tags=["onramp", layout.key], job_variables=job_variables)
    state = run.state
    if state is None or not state.is_final():
        raise OnboardError(f"build-layout run {run.name} ({layout.key}) did not finish within {timeout:.0f} s "
                           f"(state {state.name if state else 'unknown'})",
                           "see the run in the Prefect UI; raise OnboardConfig.gpu_build_timeout_s for big models")
    if not state.is_completed():
        message = (state.message or state.name).removeprefix("Flow run encountered an exception: ")
        raise OnboardError(f"build-layout run {run.name} on the {GPU_POOL} pool failed: {message}",
                           "see that run's logs in the Prefect UI")
    return fetch_published(settings, repo, str(run.id))


def publish_build(engine_dir: Path, settings: Settings, flow_run_id: str) -> tuple[str, str]:
    """Make a build of a ``build-layout`` run reachable from other machines: register it (once per
    build id, ``gate=pending``) and tag the version with the run's id; ``(name, version)``."""
    from flows import steps
    from registry.client import Registry

    registry = Registry(settings)
    manifest = steps.read_build(engine_dir)
    name = steps.model_name(manifest)
    version = steps.find_version(registry, name, manifest["build_id"])
    if version is None:
        version = registry.register(engine_dir, name=name, gate_passed=False, tags={"gate": PENDING})
    registry.set_version_tag(name, version, FLOW_RUN_TAG, flow_run_id)
    return name, version


def fetch_published(settings: Settings, repo: str, flow_run_id: str) -> Path:
    """The engine that the ``build-layout`` run ``flow_run_id`` published, fetched and verified."""
    from builders.build import served_name
    from registry.client import Registry
    from registry.names import registered_name

    registry = Registry(settings)
    name = registered_name(repo, served_name(repo))  # as flows.steps.model_name names the build
    found = registry.versions_tagged(name, FLOW_RUN_TAG, flow_run_id)
    if not found:
        raise OnboardError(f"build-layout run {flow_run_id} completed but no version of {name} carries its tag "
                           f"{FLOW_RUN_TAG}", "the GPU worker must use the same MLflow registry "
                           "(ONRAMP_MLFLOW_TRACKING_URI) as the onboard run")
    return registry.fetch(name, str(found[0].version))
