"""Greedy answers of a built engine through the engine protocol (``serving.engines``): whatever its
backend, the engine is loaded as the server loads it and asked the agreement prompts, greedy.

A directory without a manifest (a bare export) is loaded by the default backend's engine with
onramp's default runtime.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from evals.errors import EvalError

__all__ = ["engine_greedy_texts"]


def _load(engine_dir: Path):
    from builders.backends import backend_for_engine
    from onramp.errors import OnrampError
    from serving.engines import backend_class, load_engine

    try:
        if (engine_dir / "manifest.json").is_file():
            return load_engine(engine_dir, max_num_seqs=1)
        cls = backend_class(backend_for_engine(engine_dir).name)
        return cls.from_manifest(engine_dir, None, name=engine_dir.name, max_num_seqs=1)
    except OnrampError as err:
        raise EvalError(f"the engine in {engine_dir} cannot be loaded: {err.what}", err.fix) from None


async def _answers(engine, prompts: list[str], max_tokens: int) -> list[str]:
    from evals.agreement import _messages
    from serving.engine import ChatMessage, GenerationRequest, SamplingParams

    out = []
    for i, prompt in enumerate(prompts):
        request = GenerationRequest(request_id=f"agreement-{i}",
                                    messages=[ChatMessage(role=m["role"], content=m["content"])
                                              for m in _messages(prompt)],
                                    sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0))
        out.append("".join([d.text async for d in engine.stream(request)]))
    return out


def engine_greedy_texts(engine_dir: str | Path, prompts: list[str], k: int) -> list[str]:
    """The first ``k`` (and a few more) greedy tokens' text of the engine's answer to each prompt."""
    from evals.agreement import _SLACK

    engine = _load(Path(engine_dir))
    try:
        return asyncio.run(_answers(engine, prompts, k + _SLACK))
    finally:
        engine.close()
