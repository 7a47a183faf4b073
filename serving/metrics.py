"""Prometheus metrics of the server, on a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("onramp_requests", "Requests by model, endpoint and HTTP status.",
                                ["model", "endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("onramp_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.completion_tokens = Counter("onramp_completion_tokens", "Completion tokens generated.", ["model"],
                                         registry=r)
        self.ttft = Histogram("onramp_time_to_first_token_seconds", "Time from request to first token.",
                              ["model"], buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("onramp_inter_token_latency_seconds", "Time between output tokens.",
                             ["model"], buckets=_ITL_BUCKETS, registry=r)
        self.queue_depth = Gauge("onramp_queue_depth", "Requests admitted and waiting for their first token.",
                                 ["model"], registry=r)
        self.running = Gauge("onramp_running_sequences", "Requests generating tokens.", ["model"], registry=r)
        self.engine_info = Gauge("onramp_engine_info", "The active engine per served model (value 1).",
                                 ["model", "version", "backend"], registry=r)
        self.swaps = Counter("onramp_engine_swaps", "Engine swaps by model and result.", ["model", "result"],
                             registry=r)
        self.swap_failures = Counter(
            "onramp_swap_failures", "Failed attempts to bring in a new engine (load, warm-up, timeout; the "
            "registry follower's fetches too).", ["model"], registry=r)
        # per version (canary rollouts compare these; model is the served name, version the registry's)
        mv = ["model", "version"]
        self.version_requests = Counter("onramp_version_requests", "Requests admitted, by model and version.",
                                        mv, registry=r)
        self.version_errors = Counter("onramp_version_errors", "Admitted requests that failed, by version.",
                                      mv, registry=r)
        self.version_tokens = Counter("onramp_version_completion_tokens", "Completion tokens by version.",
                                      mv, registry=r)
        self.version_ttft = Histogram("onramp_version_time_to_first_token_seconds", "TTFT by version.",
                                      mv, buckets=_TTFT_BUCKETS, registry=r)
        self.version_itl = Histogram("onramp_version_inter_token_latency_seconds", "ITL by version.",
                                     mv, buckets=_ITL_BUCKETS, registry=r)
        shadow = ["model", "production", "canary"]
        self.shadow_requests = Counter("onramp_shadow_requests", "Production requests mirrored to the canary.",
                                       shadow, registry=r)
        self.shadow_identical = Counter("onramp_shadow_identical", "Shadowed requests whose first K tokens "
                                        "agree with production's answer.", shadow, registry=r)
        self.shadow_matched = Counter("onramp_shadow_matched_prefix", "Sum of the matched share of the first "
                                      "K tokens (divide by onramp_shadow_requests for the mean).", shadow, registry=r)
        self.canary_weight = Gauge("onramp_canary_weight", "Percent of requests routed to the canary.",
                                   ["model", "version"], registry=r)

    def set_active(self, model: str, version: str, backend: str) -> None:
        for sample in list(self.engine_info.collect()[0].samples):
            if sample.labels.get("model") == model:
                self.engine_info.remove(model, sample.labels["version"], sample.labels["backend"])
        self.engine_info.labels(model, version, backend).set(1)

    def remove_model(self, model: str) -> None:
        for sample in list(self.engine_info.collect()[0].samples):
            if sample.labels.get("model") == model:
                self.engine_info.remove(model, sample.labels["version"], sample.labels["backend"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
