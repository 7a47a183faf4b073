"""The ``ContinuousBatchingPipeline`` s of an OpenVINO engine, as its manifest's runtime asks: one,
with or without prompt lookup, or (``decoding.lookup_below``) a plain one and a drafting one beside it
on the same weights (load-adaptive prompt lookup, see :mod:`serving.engines.ov_loop`). Used by the
engine and by the benchmarks' bare engine, so both load exactly the same thing."""

from __future__ import annotations

from typing import Any

__all__ = ["load_pipelines", "scheduler_config"]


def scheduler_config(ov_genai: Any, fields: dict[str, Any]) -> Any:
    """An ``openvino_genai.SchedulerConfig`` with ``fields`` set (None values left at OpenVINO's default)."""
    config = ov_genai.SchedulerConfig()
    for key, value in fields.items():
        if value is not None:
            setattr(config, key, value)
    return config


def load_pipelines(ov_genai: Any, engine_dir: str, tokenizer: Any, scheduler: dict[str, Any], device: str,
                   properties: dict[str, Any], draft: dict[str, int], lookup_below: int) -> tuple[Any, Any | None]:
    """``(pipeline, drafting pipeline or None)``. ``draft``: the GenerationConfig fields of a drafted
    request (empty: no prompt lookup); ``lookup_below`` > 0: drafts only in the second pipeline, which
    holds at most that many sequences."""
    pipe = ov_genai.ContinuousBatchingPipeline(
        engine_dir, tokenizer, scheduler_config(ov_genai, scheduler), device, **properties,
        **({"prompt_lookup": True} if draft and not lookup_below else {}))
    if not (draft and lookup_below):
        return pipe, None
    lookup = ov_genai.ContinuousBatchingPipeline(
        engine_dir, tokenizer, scheduler_config(ov_genai, {**scheduler, "max_num_seqs": lookup_below}), device,
        **properties, prompt_lookup=True)
    return pipe, lookup
