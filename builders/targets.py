"""Plan and build for a list of hardware targets: what an onboarding builds.

:func:`plan_targets` runs the planner for each target and selects one layout per target (the
smallest-TP feasible layout of the wanted precision); :func:`build_target` builds exactly the
layout the planner chose, CPU and GPU alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from builders.errors import BuilderError

__all__ = ["TargetLayout", "default_precision", "plan_targets", "build_target", "created_after", "runtime_variants"]


class TargetLayout(BaseModel):
    """One layout the planner considered for a target: built (selected) or not, and why."""

    model_config = ConfigDict(extra="forbid")

    key: str                       # e.g. "cpu-tp1-int8", unique within a plan
    target: str                    # hardware name as given in --targets
    kind: str                      # "cpu" or "gpu"
    backend: str
    precision: str
    quantization: str
    tp: int = 1
    feasible: bool = True
    selected: bool = False         # the layout(s) per target that get built
    rank: int = 0                  # among a target's selected layouts, the planner's preference (0 first)
    runtime_precision: str | None = None  # the backend's compute variant (openvino: f32-dq32...); None: default
    reason: str = ""
    max_batch: int = 0
    layout: dict[str, Any] | None = None  # builders.Layout of a feasible option


def default_precision(kind: str, model_dtype: str) -> str:
    """CPU engines are int8 (OpenVINO weight compression); GPUs keep the checkpoint's 16-bit dtype."""
    if kind == "cpu":
        return "int8"
    return model_dtype if model_dtype in ("fp16", "bf16") else "fp16"


def plan_targets(checkpoint: Path, targets: list[str], precision: str | None = None,
                 runtime_precision: str | None = None) -> list[TargetLayout]:
    """Every layout the planner considers for each target; per target, the smallest-TP feasible
    layout of the wanted precision is selected for building (the others explain themselves).
    ``precision`` may list several (``int8,int4``): each is selected, ranked by the planner's
    preference (:meth:`builders.planner.Plan.candidates`: fewest weight bytes first).
    ``runtime_precision`` (``f32-dq32,f32``) builds each selected layout once per compute variant on
    targets whose backend records one (``default_runtime``), ranked in the order given within a layout;
    other targets ignore it."""
    from builders.hardware import get_hardware
    from builders.planner import plan_checkpoint

    out: list[TargetLayout] = []
    for target in targets:
        hw = get_hardware(target)
        result = plan_checkpoint(checkpoint, hw.name)
        wants = [w.strip() for w in (precision or default_precision(hw.kind, result.facts.dtype)).split(",")
                 if w.strip()]
        for want in wants:
            if want not in hw.precisions:
                raise BuilderError(f"{hw.name} offers no precision {want!r}",
                                   f"pass --precision one of {', '.join(hw.precisions)} (or leave it out)")
        ranks = {id(o): i for i, o in enumerate(result.candidates(wants))}
        variants = runtime_variants(hw.backend, runtime_precision)
        for o in result.options:
            for j, variant in enumerate(variants if id(o) in ranks else [None]):
                out.append(TargetLayout(
                    key=f"{hw.name}-tp{o.tp}-{o.precision}" + (f"-{variant}" if variant else ""), target=hw.name,
                    kind=hw.kind, backend=hw.backend, precision=o.precision, quantization=o.quantization, tp=o.tp,
                    feasible=o.feasible, selected=id(o) in ranks, rank=ranks.get(id(o), 0) * len(variants) + j,
                    reason=o.reason, max_batch=o.max_batch, runtime_precision=variant,
                    layout=o.to_layout().model_dump() if o.feasible else None))
    return out


def runtime_variants(backend: str, runtime_precision: str | None) -> list[str | None]:
    """The compute variants of ``runtime_precision`` (``f32-dq32,f32``) to build on ``backend``, checked by
    the backend (a BuilderError names a bad one); ``[None]``: its default, or a backend without variants."""
    from builders.backends import get_backend

    default_runtime = getattr(get_backend(backend), "default_runtime", None)
    if not runtime_precision or default_runtime is None:
        return [None]
    variants = list(dict.fromkeys(v.strip() for v in runtime_precision.split(",") if v.strip()))
    for variant in variants:
        default_runtime(None, variant)  # BuilderError naming a bad one
    return variants or [None]


def build_target(checkpoint: Path, target: TargetLayout, repo: str, sha: str, settings: Any) -> Path:
    """Build (or reuse: a finished build with the same build_id) the layout the planner chose."""
    from builders.build import build_engine
    from builders.manifest import Layout

    if not target.feasible or target.layout is None:
        raise BuilderError(f"layout {target.key} is not feasible: {target.reason}", "pick a feasible layout")
    quant = target.quantization if target.quantization != "none" else target.precision
    return build_engine(checkpoint, backend=target.backend, quant=quant, out_root=settings.engines_dir,
                        repo=repo, revision=sha, layout=Layout(**target.layout), settings=settings,
                        runtime_precision=target.runtime_precision)


def created_after(engine_dir: Path, started: float) -> bool:
    """Whether the build in ``engine_dir`` was made after ``started`` (not a reused one)."""
    from datetime import datetime

    from builders.manifest import read_manifest

    created = read_manifest(engine_dir).created or ""
    try:
        return datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp() >= started
    except ValueError:
        return False
