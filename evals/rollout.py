"""Canary rollout: move the ``canary`` through weight steps, judge it live, promote or roll back.

Each step sets the canary weight in the registry (every ``onramp serve --registry`` replica
follows it), waits ``window`` seconds, then reads the per-version series of every server's
``/metrics`` (summed). The canary's numbers in the window are compared with production's since
the rollout began, within the tolerances of the ``rollout:`` section of ``evals/gates.yaml``.
A breach removes the canary at once (rollback) and names the metric; when the last step passes,
``production`` moves to the version and the canary is removed. Every step and the decision are
tagged on the MLflow version (``rollout.step.N``, ``rollout.decision``) and passed to ``report``
(the flow turns them into Prefect artifacts).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import httpx

from evals.gates import RolloutRules, load_gates
from onramp.errors import OnrampError

if TYPE_CHECKING:
    from registry.client import Registry

log = logging.getLogger(__name__)

__all__ = ["RolloutError", "RolloutResult", "Stats", "judge", "parse_steps", "rollout", "scrape"]

_PREFIX = "onramp_version_"


class RolloutError(OnrampError):
    """A rollout could not start or read its servers."""


@dataclass
class Stats:
    """Per-version counters (cumulative, or a window's difference)."""

    requests: float = 0.0
    errors: float = 0.0
    tokens: float = 0.0
    ttft_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    itl_sum: float = 0.0
    itl_count: float = 0.0
    shadow_requests: float = 0.0  # production requests mirrored to this version (as the canary)
    shadow_matched: float = 0.0  # sum of their matched-prefix shares

    def minus(self, other: Stats) -> Stats:
        return Stats(self.requests - other.requests, self.errors - other.errors, self.tokens - other.tokens,
                     {le: c - other.ttft_buckets.get(le, 0.0) for le, c in self.ttft_buckets.items()},
                     self.itl_sum - other.itl_sum, self.itl_count - other.itl_count,
                     self.shadow_requests - other.shadow_requests, self.shadow_matched - other.shadow_matched)

    @property
    def shadow_agreement(self) -> float | None:
        return self.shadow_matched / self.shadow_requests if self.shadow_requests > 0 else None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ttft_p99(self) -> float | None:
        """The 99th percentile, interpolated linearly inside its bucket (as Prometheus'
        ``histogram_quantile``); the largest finite bound when it falls in the ``+Inf`` bucket."""
        total = self.ttft_buckets.get(float("inf"), 0.0)
        if total <= 0:
            return None
        rank, lower, below = 0.99 * total, 0.0, 0.0
        for le in sorted(self.ttft_buckets):
            count = self.ttft_buckets[le]
            if count >= rank:
                if le == float("inf"):
                    return lower
                return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
            lower, below = le, count
        return lower

    @property
    def decode_tok_s(self) -> float | None:
        return self.itl_count / self.itl_sum if self.itl_sum > 0 else None


def canary_weights(servers: Sequence[str], model: str, version: str) -> list[float]:
    """Each server's ``onramp_canary_weight`` of the version (0 where its canary is not live)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for url in servers:
        weight = 0.0
        try:
            text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=10).raise_for_status().text
        except httpx.HTTPError:
            out.append(weight)
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if (s.name == "onramp_canary_weight" and s.labels.get("model") == model
                        and s.labels.get("version") == version):
                    weight = s.value
        out.append(weight)
    return out


def scrape(servers: Sequence[str], model: str, timeout: float = 10.0) -> dict[str, Stats]:
    """``{version: Stats}`` of ``model``, summed over the servers' ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Stats] = defaultdict(Stats)
    for url in servers:
        try:
            text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout).raise_for_status().text
        except httpx.HTTPError as exc:
            raise RolloutError(f"cannot read {url}/metrics: {exc}",
                               "pass the URLs of the running servers with --server") from None
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("onramp_shadow_") and s.labels.get("model") == model:
                    if s.name == "onramp_shadow_requests_total":
                        out[s.labels["canary"]].shadow_requests += s.value
                    elif s.name == "onramp_shadow_matched_prefix_total":
                        out[s.labels["canary"]].shadow_matched += s.value
                    continue
                if not s.name.startswith(_PREFIX) or s.labels.get("model") != model:
                    continue
                st, name = out[s.labels["version"]], s.name[len(_PREFIX):]
                if name == "requests_total":
                    st.requests += s.value
                elif name == "errors_total":
                    st.errors += s.value
                elif name == "completion_tokens_total":
                    st.tokens += s.value
                elif name == "time_to_first_token_seconds_bucket":
                    le = float(s.labels["le"])
                    st.ttft_buckets[le] = st.ttft_buckets.get(le, 0.0) + s.value
                elif name == "inter_token_latency_seconds_sum":
                    st.itl_sum += s.value
                elif name == "inter_token_latency_seconds_count":
                    st.itl_count += s.value
    return dict(out)


@dataclass
class Check:
    metric: str
    canary: float | None
    production: float | None
    limit: float
    passed: bool
    note: str = ""


def judge(canary: Stats, production: Stats, rules: RolloutRules) -> list[Check]:
    """The checks of one window (a latency check without enough data passes, noted as such)."""
    checks = [Check("error_rate_increase", canary.error_rate, production.error_rate, rules.error_rate_max_increase,
                    canary.error_rate - production.error_rate <= rules.error_rate_max_increase)]
    enough = canary.requests >= rules.min_requests and production.requests > 0
    for metric, c, p, limit, ok in (
        ("ttft_p99_ratio", canary.ttft_p99, production.ttft_p99, rules.ttft_p99_ratio_max,
         lambda r: r <= rules.ttft_p99_ratio_max),
        ("decode_speed_ratio", canary.decode_tok_s, production.decode_tok_s, rules.decode_speed_ratio_min,
         lambda r: r >= rules.decode_speed_ratio_min),
    ):
        if not enough or not c or not p:
            checks.append(Check(metric, c, p, limit, True, "not judged: too few requests in the window"))
        else:
            checks.append(Check(metric, c / p, None, limit, ok(c / p), f"canary {c:.4g} vs production {p:.4g}"))
    if rules.shadow_agreement_min is not None:
        agree = canary.shadow_agreement
        checks.append(Check("shadow_agreement", agree, None, rules.shadow_agreement_min,
                            agree is None or agree >= rules.shadow_agreement_min,
                            "not judged: no shadowed requests in the window" if agree is None else
                            f"mean matched prefix of {canary.shadow_requests:g} shadowed requests"))
    return checks


@dataclass
class RolloutResult:
    name: str
    version: str
    decision: str  # promoted | rolled_back
    metric: str | None  # the breached metric on a rollback
    steps: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        if self.decision == "promoted":
            return f"{self.name} version {self.version} promoted to production after {len(self.steps)} step(s)"
        return f"{self.name} version {self.version} rolled back: {self.metric} breached"


def parse_steps(text: str) -> list[float]:
    try:
        steps = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise RolloutError(f"--steps {text!r} is not a list of percentages", "write e.g. --steps 5,25,100") from None
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(steps) or steps[-1] != 100:
        raise RolloutError(f"--steps {text!r}: give rising percentages in (0, 100] ending at 100",
                           "write e.g. --steps 5,25,100")
    return steps


def parse_window(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise RolloutError(f"--window {text!r} is not a duration", "write e.g. 30s, 10m or 1h") from None


def _tag(reg: Registry, name: str, version: str, key: str, value: dict | str) -> None:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    reg.set_version_tag(name, version, key, text[:5000])


def rollout(reg: Registry, name: str, version: str, *, steps: Sequence[float], window: float,
            servers: Sequence[str], rules: RolloutRules | None = None,
            report: Callable[[str, dict], None] | None = None, sleep: Callable[[float], None] = time.sleep,
            promote_force: bool = False, shadow: float | None = None, live_timeout: float = 600.0) -> RolloutResult:
    """Roll ``version`` of ``name`` out through ``steps`` (percent); see the module doc."""
    from registry.canary import clear_canary, set_canary

    rules = rules or load_gates().rollout
    version = str(version)
    production = reg.alias_version(name, "production")
    if production is None:
        raise RolloutError(f"{name} has no production version to compare a canary with",
                           f"promote one first: `onramp promote {name} VERSION`")
    if production == version:
        raise RolloutError(f"{name} version {version} is already production", "roll out another version")
    if not servers:
        raise RolloutError("a rollout reads the servers' /metrics, and none was given",
                           "pass --server URL (repeatable) or set ONRAMP_ROLLOUT_SERVERS")
    report = report or (lambda kind, data: None)
    start = scrape(servers, name)
    result = RolloutResult(name=name, version=version, decision="promoted", metric=None)
    _tag(reg, name, version, "rollout.started", {"production": production, "steps": list(steps), "window_s": window})
    for i, weight in enumerate(steps):
        set_canary(reg, name, version, weight, shadow=shadow)
        checks, breach = [], None
        deadline = time.monotonic() + live_timeout  # every server routes the weight before the window
        while (weights := canary_weights(servers, name, version)) != [weight] * len(servers):
            if time.monotonic() > deadline:
                breach = Check("canary_live", min(weights), None, weight, False,
                               f"servers' canary weights {weights} after {live_timeout:g} s")
                checks.append(breach)
                break
            sleep(min(1.0, window))
        canary = prod = Stats()
        if breach is None:
            before = scrape(servers, name)
            sleep(window)
            after = scrape(servers, name)
            canary = after.get(version, Stats()).minus(before.get(version, Stats()))
            # production in the same window where it had traffic, else since the rollout began
            prod = after.get(production, Stats()).minus(before.get(production, Stats()))
            if prod.requests < rules.min_requests:
                prod = after.get(production, Stats()).minus(start.get(production, Stats()))
            checks = judge(canary, prod, rules)
            breach = next((c for c in checks if not c.passed), None)
        if breach is None and weight == steps[-1] and canary.requests < rules.min_requests:
            breach = Check("canary_requests", canary.requests, None, rules.min_requests, False,
                           "too few canary requests in the last window to promote")
            checks.append(breach)
        step = {"step": i + 1, "weight": weight, "canary_requests": canary.requests,
                "production_requests": prod.requests, "checks": [asdict(c) for c in checks],
                "passed": breach is None}
        result.steps.append(step)
        _tag(reg, name, version, f"rollout.step.{i + 1}", step)
        report("step", step)
        log.info("rollout %s v%s step %d (%g%%): %s", name, version, i + 1, weight,
                 "passed" if breach is None else f"{breach.metric} breached")
        if breach is not None:
            clear_canary(reg, name)
            result.decision, result.metric = "rolled_back", breach.metric
            break
    else:
        reg.promote(name, version, force=promote_force)
        clear_canary(reg, name)
    decision = {"decision": result.decision, "metric": result.metric, "summary": result.summary()}
    _tag(reg, name, version, "rollout.decision", decision)
    report("decision", decision)
    return result
