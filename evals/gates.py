"""Promotion gates: every metric against its threshold, and against production.

Thresholds live in a versioned YAML file (``evals/gates.yaml`` by default). ``apply_gates``
lists every check with its value, threshold and verdict, and names the failing ones; a gated
metric that was not measured fails (an unmeasured build is not a good build), unless its
section is left out with ``sections=`` or its threshold is ``report_only``. A check marked
``advisory: true`` is judged and shown like the others but never fails the gate (small samples:
a few prompts or problems); ``report_only`` is the same for absolute latency SLOs.

Against production: quality metrics by their stored numbers (``regression``); latency only side
by side (``latency_ab``: candidate/production ratios from one A/B run, evals.latency_ab), never
against a latency number measured in another run: a gates file that lists a latency metric under
``regression`` is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evals.errors import GateConfigError

GATES_FILE = Path(__file__).resolve().parent / "gates.yaml"
SECTIONS = ("quality", "latency")


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max: float | None = None
    min: float | None = None
    report_only: bool = False  # shown with every build, never fails the gate (absolute latency SLOs)
    advisory: bool = False  # shown with its verdict, never fails the gate (small samples)

    @model_validator(mode="after")
    def _one(self) -> Threshold:
        if (self.max is None) == (self.min is None):
            raise ValueError("give exactly one of `max` or `min`")
        return self


class RatioRule(BaseModel):
    """A candidate/production ratio from the side-by-side latency A/B."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_ratio: float | None = Field(None, gt=0)  # higher is better: fail if the interval's upper bound < this
    max_ratio: float | None = Field(None, gt=0)  # lower is better: fail if the interval's lower bound > this

    @model_validator(mode="after")
    def _one(self) -> RatioRule:
        if (self.max_ratio is None) == (self.min_ratio is None):
            raise ValueError("give exactly one of `min_ratio` or `max_ratio`")
        return self


class LatencyAB(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    confidence: float = Field(0.90, gt=0.5, lt=1.0)  # two-sided interval over the A/B rounds
    metrics: dict[str, RatioRule] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> LatencyAB:
        from evals.latency_ab import AB_METRICS

        for name, rule in self.metrics.items():
            if name not in AB_METRICS:
                raise ValueError(f"unknown A/B metric {name!r} (one of {', '.join(AB_METRICS)})")
            want = "min_ratio" if AB_METRICS[name] == "higher" else "max_ratio"
            if getattr(rule, want) is None:
                raise ValueError(f"{name} is {AB_METRICS[name]}-is-better: give `{want}`")
        return self


class RegressionMetric(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    better: Literal["higher", "lower"]
    abs_tol: float = Field(0.0, ge=0)
    advisory: bool = False


class Regression(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pct: float = Field(10.0, ge=0)
    metrics: dict[str, RegressionMetric] = Field(default_factory=dict)


class RolloutRules(BaseModel):
    """Canary vs production tolerances of ``onramp rollout`` (the ``rollout:`` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate_max_increase: float = Field(0.01, ge=0)  # canary error rate - production's (absolute)
    ttft_p99_ratio_max: float = Field(2.0, gt=0)  # canary TTFT p99 / production's
    decode_speed_ratio_min: float = Field(0.5, ge=0)  # canary decode tok/s / production's
    shadow_agreement_min: float | None = Field(None, ge=0, le=1)  # mean matched prefix share (shadow)
    min_requests: int = Field(3, ge=1)  # canary requests a window needs before latency is judged


class Gates(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str | int
    quality: dict[str, Threshold] = Field(default_factory=dict)
    latency: dict[str, Threshold] = Field(default_factory=dict)
    regression: Regression = Field(default_factory=Regression)
    rollout: RolloutRules = Field(default_factory=RolloutRules)
    latency_ab: LatencyAB = Field(default_factory=LatencyAB)
    source: str | None = None

    @model_validator(mode="after")
    def _no_latency_regression(self) -> Gates:
        from evals.latency import is_latency_metric

        for name in self.regression.metrics:
            if is_latency_metric(name):
                raise ValueError(f"{name} is a latency metric: latency is never judged against a number measured "
                                 "in another run; gate it side by side under `latency_ab`")
        return self


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str
    kind: Literal["threshold", "regression", "ratio"]
    section: str
    value: float | None
    threshold: str  # human readable: "<= 1.05", ">= 0.5", "<= 10% worse than 61.9 (production)"
    passed: bool
    note: str = ""
    gating: bool = True  # False: report only (an absolute latency SLO), never fails the gate
    advisory: bool = False  # judged and shown, but does not decide the gate


class GateResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gates_version: str
    gates_source: str | None
    passed: bool
    checks: list[Check]
    failed: list[str]  # names of the failing metrics, in check order

    @property
    def rows(self) -> list[dict]:
        """One plain row per check: metric, kind, value, threshold, result, note."""
        return [{"metric": c.metric, "kind": c.kind, "value": c.value, "threshold": c.threshold,
                 "result": ("pass" if c.passed else "miss (advisory)" if c.advisory
                            else "FAIL" if c.gating else "missed (report only)"), "note": c.note}
                for c in self.checks]

    @property
    def summary(self) -> str:
        return self.to_markdown()

    def to_markdown(self) -> str:
        verdict = "PASS" if self.passed else f"FAIL ({', '.join(self.failed)})"
        lines = [f"## Gate: **{verdict}**", "",
                 f"gates version {self.gates_version}" + (f" ({self.gates_source})" if self.gates_source else ""),
                 "", "| metric | kind | value | threshold | result |", "|---|---|---|---|---|"]
        for c in self.checks:
            value = "not measured" if c.value is None else f"{c.value:.4g}"
            result = ("pass" if c.passed else "miss (advisory)" if c.advisory
                      else "**FAIL**" if c.gating else "missed (report only)")
            lines.append(f"| {c.metric} | {c.kind} | {value} | {c.threshold} | {result}"
                         f"{' — ' + c.note if c.note else ''} |")
        return "\n".join(lines) + "\n"


def load_gates(path: str | Path | None = None) -> Gates:
    path = Path(path) if path else GATES_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise GateConfigError(f"cannot read gates file {path}: {exc}",
                              "pass --gates with a readable YAML file (see evals/gates.yaml)") from None
    if not isinstance(data, dict) or "version" not in data:
        raise GateConfigError(f"gates file {path} has no `version:`",
                              "gates files are versioned: add `version: N` (see evals/gates.yaml)")
    try:
        return Gates(**data, source=str(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise GateConfigError(f"gates file {path}: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                              "fix it after the format of evals/gates.yaml") from None


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value


def apply_gates(metrics: dict[str, float], gates: Gates | str | Path | None = None,
                production: dict[str, float] | None = None, *,
                sections: tuple[str, ...] | list[str] | None = None, ab=None) -> GateResult:
    """Judge ``metrics`` against the thresholds in ``gates`` and, if given, the production metrics
    (quality only) and the side-by-side latency A/B against production (``ab``, an
    evals.latency_ab.ABReport; its ratios are judged under ``latency_ab``).

    ``sections`` (default: all) picks the threshold sections to apply (``quality``, ``latency``);
    a metric that is NaN or infinite fails its check.
    """
    if not isinstance(gates, Gates):
        gates = load_gates(gates)
    sections = tuple(sections) if sections is not None else SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise GateConfigError(f"unknown gate section(s) {sorted(unknown)}", f"use some of {list(SECTIONS)}")
    checks: list[Check] = []
    for section in sections:
        for name, th in getattr(gates, section).items():
            value = _finite(metrics.get(name))
            text = f"<= {th.max:g}" if th.max is not None else f">= {th.min:g}"
            gating = not th.report_only
            if value is None:
                checks.append(Check(metric=name, kind="threshold", section=section, value=None, threshold=text,
                                    passed=False, note="not measured", gating=gating, advisory=th.advisory))
                continue
            ok = math.isfinite(value) and (value <= th.max if th.max is not None else value >= th.min)
            checks.append(Check(metric=name, kind="threshold", section=section, value=value, threshold=text,
                                passed=ok, note="" if math.isfinite(value) else "not a finite number",
                                gating=gating, advisory=th.advisory))
    if production:
        pct = gates.regression.max_pct
        for name, rule in gates.regression.metrics.items():
            value, prod = _finite(metrics.get(name)), _finite(production.get(name))
            if value is None or prod is None or not math.isfinite(prod):
                continue  # nothing to compare: this build or production did not measure it
            allowed = abs(prod) * pct / 100 + rule.abs_tol
            worse = (prod - value) if rule.better == "higher" else (value - prod)
            ok = math.isfinite(value) and worse <= allowed
            sign = "-" if rule.better == "higher" else "+"
            checks.append(Check(
                metric=name, kind="regression", section="regression", value=value,
                threshold=f"{'>=' if rule.better == 'higher' else '<='} {prod:.4g} {sign} {pct:g}%"
                          f"{f' {sign} {rule.abs_tol:g}' if rule.abs_tol else ''} (production {prod:.4g})",
                passed=ok, advisory=rule.advisory))
    if ab is not None:
        checks += _ratio_checks(ab, gates.latency_ab)
    failed = [c.metric if c.kind == "threshold" else f"{c.metric} ({c.kind})" for c in checks
              if not c.passed and c.gating and not c.advisory]
    return GateResult(gates_version=str(gates.version), gates_source=gates.source, passed=not failed,
                      checks=checks, failed=failed)


def _ratio_checks(ab, rules: LatencyAB) -> list[Check]:
    """Each A/B metric: fail only when its whole confidence interval is worse than the tolerance."""
    checks = []
    conf = rules.confidence
    for name, rule in rules.metrics.items():
        est = ab.estimate(name, conf)
        if rule.min_ratio is not None:
            text = f"{conf:.0%} upper bound >= {rule.min_ratio:g}"
        else:
            text = f"{conf:.0%} lower bound <= {rule.max_ratio:g}"
        if est.lo is None or est.hi is None:
            checks.append(Check(metric=name, kind="ratio", section="latency_ab", value=est.ratio, threshold=text,
                                passed=False, note=f"not measured (ratios from {est.rounds} rounds; need 2 or more)"))
            continue
        ok = est.hi >= rule.min_ratio if rule.min_ratio is not None else est.lo <= rule.max_ratio
        checks.append(Check(metric=name, kind="ratio", section="latency_ab", value=est.ratio, threshold=text,
                            passed=ok, note=f"candidate/production {est.ratio:.3f}, interval [{est.lo:.3f}, "
                                            f"{est.hi:.3f}] over {est.rounds} rounds"))
    return checks
