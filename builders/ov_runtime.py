"""The OpenVINO runtime configuration of an engine: part of the build, recorded in its manifest.

OpenVINO's CPU plugin picks its compute precision by itself: bf16 where the CPU has AVX-512 BF16
or AMX, f32 elsewhere. The same engine directory then answers differently on different hosts
(the reference int8 engine answers "Paris" in f32 and nonsense in bf16). So every property that
changes numerics is chosen at build time, written into ``manifest.json`` (``runtime.properties``)
and passed explicitly wherever the engine is loaded: the server, the evals, the benchmarks.
The scheduler settings (``runtime.scheduler``) travel the same way.

``ONRAMP_OPENVINO_PRECISION`` (``f32`` or ``bf16``) overrides the recorded inference precision at
every load: a test switch to run the whole suite with either compute precision; it is logged.

This module imports no OpenVINO: it only reads manifests.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["CPU_LOAD_DEFAULTS", "DEFAULT_PROPERTIES", "DEFAULT_SCHEDULER", "PRECISION_ENV", "PRECISIONS",
           "PROMPT_LOOKUP_NGRAM", "PROMPT_LOOKUP_TOKENS", "decoding_settings", "default_runtime", "load_properties",
           "parse_precision", "precision_override", "scheduler_settings", "split_decoding"]

PRECISION_ENV = "ONRAMP_OPENVINO_PRECISION"
PRECISIONS = ("f32", "bf16", "f16")

# What an int8/int4 CPU engine runs with unless its layout asks for another precision, explicit so
# that no host picks others. f32 compute and u8 KV cache are this OpenVINO's CPU defaults on a CPU
# without BF16. Dynamic quantization of activations (group 32 by default) is off: it does nothing
# on AVX2 but is active on AVX-512/AMX CPUs, where it doubled the int8 reference engine's KL
# divergence (0.0086 vs 0.0045 nats); with 0 an AMX Xeon gave exactly the AVX2 EPYC's numbers.
DEFAULT_PROPERTIES: dict[str, Any] = {
    "INFERENCE_PRECISION_HINT": "f32",
    "KV_CACHE_PRECISION": "u8",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
    "EXECUTION_MODE_HINT": "PERFORMANCE",
}
# Where the CPU plugin's threads run, not what they compute: applied at every CPU load under the
# recorded properties (a manifest that records its own value wins), so engines built before keep
# getting it. Pinned inference threads cannot leave a core that the server's event loop, the client
# or another process is using, and every parallel op of a step then waits for the pinned straggler:
# unpinned, the server decoded 1.1-1.5x faster per stream on this shared 2-core machine (c=1..16,
# alternating rounds, same tokens); TTFT with 16 prompts at once was slower (README, Builders).
CPU_LOAD_DEFAULTS: dict[str, Any] = {
    "ENABLE_CPU_PINNING": False,
}
# openvino_genai.SchedulerConfig fields (cache_size in GB). Prefix caching keeps the KV blocks of
# finished requests and reuses them for a prompt that starts with the same tokens: a chat turn
# (system prompt + history) prefills only what is new (benchmarks/prefix_bench.py).
DEFAULT_SCHEDULER: dict[str, Any] = {
    "cache_size": 1,
    "dynamic_split_fuse": True,
    "enable_prefix_caching": True,
}


# ``--runtime-precision PRECISION[-dqGROUP]``: ``-dq32`` turns on dynamic quantization of the activations
# (int8, one scale per 32 values, llama.cpp's Q8_0 activation blocks) for the compressed-weight matmuls.
# On CPUs with AVX-512 VNNI or AMX those then run as int8 x int8 dot products: measured on a 2-core
# AVX-512 EPYC (bare engine, int8 weights, ~200-token prompts): 1.7x output tok/s with 16 streams, 1.09x
# with one. It changes numerics (KL divergence ~2x the f32 build's), so it is a build of its own for the
# quality gates, never a tuner choice; on AVX2-only CPUs OpenVINO ignores it.
_VARIANT = re.compile(r"^(?P<precision>[a-z0-9]+)(?:-dq(?P<group>\d+))?$")


def parse_precision(value: str) -> tuple[str, int]:
    """``"bf16-dq32"`` -> ``("bf16", 32)``; ``"f32"`` -> ``("f32", 0)``. ValueError names what is wrong."""
    m = _VARIANT.match(value.strip().lower())
    if not m or m["precision"] not in PRECISIONS:
        raise ValueError(f"runtime precision {value!r} is not one of {', '.join(PRECISIONS)}, "
                         "optionally with -dqGROUP (e.g. f32-dq32)")
    group = int(m["group"] or 0)
    if m["group"] is not None and not 8 <= group <= 4096:
        raise ValueError(f"runtime precision {value!r}: the dynamic quantization group must be 8..4096")
    return m["precision"], group


def default_runtime(precision: str = "f32") -> dict[str, dict[str, Any]]:
    """The ``runtime`` section of a new OpenVINO engine's manifest (``precision``: see :func:`parse_precision`)."""
    compute, group = parse_precision(precision)
    return {"properties": {**DEFAULT_PROPERTIES, "INFERENCE_PRECISION_HINT": compute,
                           "DYNAMIC_QUANTIZATION_GROUP_SIZE": group},
            "scheduler": dict(DEFAULT_SCHEDULER)}


def precision_override() -> str | None:
    """The precision forced by ``ONRAMP_OPENVINO_PRECISION``, or None."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if not value:
        return None
    if value not in PRECISIONS:
        from builders.errors import BuilderError

        raise BuilderError(f"{PRECISION_ENV}={value!r} is not one of {', '.join(PRECISIONS)}",
                           f"unset {PRECISION_ENV} or set it to f32 or bf16")
    return value


def _runtime_of(manifest_or_dir: Any) -> dict[str, Any]:
    if isinstance(manifest_or_dir, (str, Path)):
        from builders.manifest import MANIFEST, read_manifest

        if not (Path(manifest_or_dir) / MANIFEST).is_file():
            log.warning("%s has no manifest: loading it with onramp's default OpenVINO properties", manifest_or_dir)
            return {}
        manifest_or_dir = read_manifest(Path(manifest_or_dir))
    runtime = getattr(manifest_or_dir, "runtime", None)
    if runtime is None:
        return {}
    if hasattr(runtime, "model_dump"):
        return runtime.model_dump()
    if isinstance(runtime, dict):
        return runtime
    return {k: (vars(v) if hasattr(v, "__dict__") else v) for k, v in vars(runtime).items()}


def load_properties(manifest_or_dir: Any, device: str = "CPU") -> dict[str, Any]:
    """The OpenVINO properties to load this engine with on ``device``: its manifest's (over
    :data:`CPU_LOAD_DEFAULTS` on a CPU), the override applied.

    An engine built before runtime properties were recorded gets :data:`DEFAULT_PROPERTIES`
    (never the device's own defaults).
    """
    props = dict(_runtime_of(manifest_or_dir).get("properties") or DEFAULT_PROPERTIES)
    if str(device).upper().startswith("CPU"):
        props = {**CPU_LOAD_DEFAULTS, **props}
    forced = precision_override()
    if forced and props.get("INFERENCE_PRECISION_HINT") != forced:
        log.warning("%s=%s overrides the engine's recorded INFERENCE_PRECISION_HINT=%s", PRECISION_ENV, forced,
                    props.get("INFERENCE_PRECISION_HINT"))
        props["INFERENCE_PRECISION_HINT"] = forced
    return props


def scheduler_settings(manifest_or_dir: Any) -> dict[str, Any]:
    """The ``SchedulerConfig`` fields recorded for this engine (defaults for older engines)."""
    return {**DEFAULT_SCHEDULER, **(_runtime_of(manifest_or_dir).get("scheduler") or {})}


# Prompt-lookup decoding (``runtime.decoding``, openvino-genai's ``prompt_lookup``): each step drafts up to
# ``num_assistant_tokens`` tokens by finding the sequence's last ``max_ngram_size`` tokens earlier in its
# prompt or output and proposing what followed there; one forward pass checks them all, and the sampler
# keeps the drafted tokens the model itself picks. Greedy output is the model's own (up to the rounding
# of a multi-token pass, like continuous batching's); what changes is how many tokens a step yields and
# what a step costs (every sequence is checked with num_assistant_tokens + 1 tokens each step, found or
# not). A speed knob, chosen by measurement (evals.tune), off unless the manifest says.
PROMPT_LOOKUP_NGRAM = 3
# the drafts the tuner tries (openvino-genai's own sample uses 5 and 3): on the bare int8 f32-dq32 engine at
# c=1, 5 drafts made 1.08x, 1.11x and 1.13x the output tok/s of 3 in three side-by-side runs
# (benchmarks/engine_ceiling.py --compare, 4-10 rounds); 7 made 0.96x, and an n-gram of 2 0.95x
PROMPT_LOOKUP_TOKENS = 5


#
# ``lookup_below`` (N > 0) makes it load-adaptive: a new request is drafted for only while fewer than N
# requests are running; the others go to a second pipeline on the same weights without drafts, so a
# lone stream gets the drafts and a full batch does not pay for checking them (the engine then holds
# two pipelines; drafted requests move to the plain one when more arrive). 0 or absent: every request
# is drafted for.


def decoding_settings(manifest_or_dir: Any) -> dict[str, int]:
    """``{"num_assistant_tokens": N, "max_ngram_size": M}`` when prompt lookup is on, else ``{}``
    (plus ``"lookup_below": K`` when it is load-adaptive)."""
    decoding = dict(_runtime_of(manifest_or_dir).get("decoding") or {})
    tokens = int(decoding.get("num_assistant_tokens") or 0)
    if tokens <= 0:
        return {}
    ngram = int(decoding.get("max_ngram_size") or PROMPT_LOOKUP_NGRAM)
    below = int(decoding.get("lookup_below") or 0)
    return {"num_assistant_tokens": tokens, "max_ngram_size": ngram, **({"lookup_below": below} if below > 0 else {})}


def split_decoding(decoding: dict[str, int]) -> tuple[dict[str, int], int]:
    """``decoding_settings`` as (the GenerationConfig fields of a drafted request, ``lookup_below``)."""
    fields = {k: v for k, v in decoding.items() if k != "lookup_below"}
    return fields, int(decoding.get("lookup_below") or 0) if fields else 0
