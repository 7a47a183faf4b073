"""``build-layout``: one flow run per layout, for the ``gpu`` work pool.

A TensorRT-LLM build needs the GPUs of the node it runs on, so each GPU layout can be built
by its own flow run on a GPU worker (``prefect worker start --pool gpu`` on a node with
TensorRT-LLM). The onboard flow starts these runs (:mod:`flows.dispatch`). The flow pulls the
pinned revision, builds the layout with the same plain functions the onboard flow uses, and
publishes the engine to the registry (``gate=pending``, tagged with this run's id), where the
onboard run picks it up. On a node without TensorRT-LLM the build fails at once, saying it is
unavailable and why.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows import steps
from builders.targets import TargetLayout, build_target
from onramp.settings import load_settings

__all__ = ["build_layout"]


@flow(name="build-layout", flow_run_name="build {repo}@{revision} {layout.key}")
def build_layout(repo: str, revision: str, layout: TargetLayout) -> dict:
    """Pull ``repo@revision``, build one layout and publish it to the registry; returns the
    engine's manifest with the registered ``name`` and ``version``."""
    from prefect.runtime import flow_run

    from flows.dispatch import publish_build

    settings = load_settings()
    checkpoint, sha = steps.pull(repo, revision, settings)
    engine_dir = build_target(checkpoint, layout, repo, sha, settings)
    manifest = steps.read_build(engine_dir)
    name, version = publish_build(engine_dir, settings, str(flow_run.id))
    get_run_logger().info("built %s into %s (build %s), published as %s version %s", layout.key, engine_dir,
                          manifest["build_id"][:12], name, version)
    return {"engine_dir": str(engine_dir), **manifest, "version": version}
