"""``onramp eval``, ``bench``, ``tune`` and ``rollout``. Nothing heavy is imported at module level."""

from __future__ import annotations

import json
from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("bench")(bench_command)
    app.command("tune")(tune_command)
    app.command("rollout")(rollout_command)


def eval_command(
    engine_dir: str = typer.Argument(..., help="Engine directory (or an http(s):// endpoint with --model)."),
    reference: Path = typer.Option(..., "--reference", help="The original checkpoint (safetensors dir)."),
    profile: str = typer.Option("quick", "--profile", help="Sample limits: quick (CI) or full (evals/profiles.yaml)."),
    gates: Path | None = typer.Option(None, "--gates", help="Gates YAML (default: evals/gates.yaml)."),
    production: Path | None = typer.Option(
        None, "--production", help="JSON file of the production version's metrics, for the regression gate."),
    model: str | None = typer.Option(None, "--model", help="Served model name, when ENGINE_DIR is a URL."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="ONRAMP_API_KEY",
                                          help="Bearer key for an endpoint candidate."),
    out: Path | None = typer.Option(None, "--out", help="Also write report.json and report.md here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report and gate result as JSON."),
) -> None:
    """Quality of ENGINE_DIR vs the reference checkpoint (lm-eval), judged by the gates; exit 1 if a gate fails."""
    from evals.gates import apply_gates, load_gates
    from evals.quality import run_quality

    gate_cfg = load_gates(gates)
    prod = _read_production(production)
    typer.secho(f"evaluating {engine_dir} (profile {profile}) against {reference}...", err=True)
    report = run_quality(engine_dir, reference, profile, model=model, api_key=api_key)
    result = apply_gates(report.metrics(), gate_cfg, prod, sections=["quality"])
    _emit({"quality": report.model_dump(mode="json"), "metrics": report.metrics(),
           "gate": result.model_dump(mode="json")},
          report.to_markdown() + "\n" + result.to_markdown(), as_json, out)
    if not result.passed:
        typer.secho(f"gate failed: {', '.join(result.failed)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def bench_command(
    url: str = typer.Argument(..., help="Server base URL, e.g. http://127.0.0.1:8000"),
    model: str = typer.Option(..., "--model", help="Served model name."),
    rates: str = typer.Option("0.5,1,2,4", "--rates", help="Comma-separated Poisson request rates (req/s)."),
    input_tokens: int = typer.Option(700, "--input-tokens", help="Prompt length (tokens, approximate)."),
    output_tokens: int = typer.Option(550, "--output-tokens", help="Output length (max_tokens)."),
    requests: int = typer.Option(32, "--requests", help="Requests per rate (at most)."),
    duration: float = typer.Option(120.0, "--duration", help="Arrival window per rate (s, at most)."),
    slo: list[float] = typer.Option([60.0, 80.0], "--slo", help="Per-stream decode SLO in tok/s (repeatable)."),
    single: int = typer.Option(3, "--single", help="Single-stream requests before the sweep."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Poisson arrivals."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer dir to size prompts exactly."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="ONRAMP_API_KEY", help="Bearer key."),
    out: Path | None = typer.Option(None, "--out", help="Write report.json, report.md and the PNG plots here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Latency: single stream, then a Poisson sweep over --rates (TTFT, ITL, tok/s, max throughput at SLO)."""
    from evals.errors import BenchError
    from evals.latency import run_sweep

    try:
        rate_list = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        raise BenchError(f"--rates {rates!r} is not a comma-separated list of numbers",
                         "pass e.g. --rates 0.5,1,2") from None
    typer.secho(f"benchmarking {model} at {url}, rates {rate_list}...", err=True)
    report = run_sweep(url, model, rate_list, input_tokens=input_tokens, output_tokens=output_tokens,
                       requests_per_rate=requests, max_duration_s=duration, slo_tok_s=slo,
                       single_requests=single, seed=seed, api_key=api_key, tokenizer=tokenizer,
                       plots_dir=out)
    _emit({"latency": report.model_dump(mode="json"), "metrics": report.metrics()}, report.to_markdown(),
          as_json, out)


def tune_command(
    engine_dir: Path = typer.Argument(..., help="An OpenVINO engine directory (made by onramp build)."),
    budget_s: float = typer.Option(120.0, "--budget-s", help="Measuring time (s, about; server starts on top)."),
    knobs: str | None = typer.Option(None, "--knobs", help="Comma-separated subset of: threads, cpu_pinning, "
                                     "max_num_batched_tokens, dynamic_split_fuse, prefix_caching, cache_size, "
                                     "prompt_lookup."),
    rate: float = typer.Option(8.0, "--rate", help="Poisson request rate of each measurement (req/s)."),
    requests: int = typer.Option(6, "--requests", help="Requests per measurement."),
    input_tokens: int = typer.Option(96, "--input-tokens", help="Prompt length (tokens, approximate)."),
    output_tokens: int = typer.Option(24, "--output-tokens", help="Output length (max_tokens)."),
    slo_ttft_s: float | None = typer.Option(None, "--slo-ttft-s", help="Absolute SLO: TTFT p50 at most this."),
    slo_decode: float | None = typer.Option(None, "--slo-decode-tok-s",
                                            help="Absolute SLO: per-stream decode p50 at least this (tok/s)."),
    lookup_below: int = typer.Option(2, "--lookup-below", min=0,
                                     help="Prompt lookup, when chosen, drafts only while fewer requests than "
                                          "this run (load-adaptive); 0: drafts for every request."),
    write: bool = typer.Option(True, "--write/--no-write", help="Write the choice into the manifest."),
    out: Path | None = typer.Option(None, "--out", help="Write tune.json, tune.md and tune.png here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Measure runtime settings of ENGINE_DIR on this machine and write the fastest that meets the SLOs
    (and beats the untuned runtime side by side) into its manifest."""
    from evals.errors import EvalError
    from evals.tune import TuneLoad, tune
    from onramp.errors import OnrampError

    try:
        load = TuneLoad(rate=rate, requests=requests, input_tokens=input_tokens, output_tokens=output_tokens)
        report = tune(engine_dir, budget_s=budget_s, knobs=[k.strip() for k in knobs.split(",") if k.strip()]
                      if knobs else None, load=load, slo_ttft_s=slo_ttft_s, slo_decode_tok_s=slo_decode,
                      write=write, out_dir=out, lookup_below=lookup_below,
                      progress=lambda msg: typer.secho(msg, err=True))
    except ValueError as err:  # pydantic: a load option out of range (an OnrampError goes to the root CLI)
        if isinstance(err, OnrampError):
            raise
        first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
        raise EvalError(f"bad tuning option {'.'.join(map(str, first['loc']))}: {first['msg']}",
                        "see onramp tune --help") from None
    typer.echo(json.dumps(report.model_dump(mode="json"), indent=2) if as_json else report.to_markdown())


def _read_production(path: Path | None) -> dict[str, float] | None:
    from evals.errors import EvalError

    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalError(f"cannot read production metrics {path}: {exc}",
                        "pass --production a JSON object of metric name -> number") from None
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        data = data["metrics"]
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise EvalError(f"production metrics {path} is not a JSON object of numbers",
                        "pass --production a JSON object of metric name -> number (or a report with `metrics`)")
    return data


def _emit(payload: dict, markdown: str, as_json: bool, out: Path | None) -> None:
    if out is not None:
        from onramp.files import write_text_atomic

        for name, text in (("report.json", json.dumps(payload, indent=2)), ("report.md", markdown)):
            write_text_atomic(out / name, text)
    typer.echo(json.dumps(payload, indent=2) if as_json else markdown)


def rollout_command(
    name: str = typer.Argument(..., help="Registered model."),
    version: str = typer.Argument(..., help="The version to roll out as the canary."),
    steps: str = typer.Option("5,25,100", "--steps", help="Canary weights in percent, rising to 100."),
    window: str = typer.Option("10m", "--window", help="How long each step runs (30s, 10m, 1h)."),
    server: list[str] = typer.Option([], "--server", help="A server's base URL whose /metrics is read; "
                                     "repeat per replica (default: ONRAMP_ROLLOUT_SERVERS, comma-separated)."),
    gates: str | None = typer.Option(None, "--gates", help="Gates file with a rollout: section "
                                     "(default: evals/gates.yaml)."),
    force: bool = typer.Option(False, "--force", help="Promote at the end even if its offline gates failed."),
    shadow: float | None = typer.Option(None, "--shadow", help="Also mirror this percent of production's "
                                        "greedy requests to the canary (agreement: shadow_agreement_min)."),
) -> None:
    """Canary VERSION through the steps; promote it, or roll it back at the first breached metric."""
    import logging
    import os

    from evals.gates import load_gates
    from evals.rollout import parse_steps, parse_window, rollout
    from registry.cli import mlflow_errors, open_registry

    logging.getLogger("evals").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(message)s")
    servers = server or [s.strip() for s in os.environ.get("ONRAMP_ROLLOUT_SERVERS", "").split(",") if s.strip()]
    with mlflow_errors():
        result = rollout(open_registry(), name, version, steps=parse_steps(steps), window=parse_window(window),
                         servers=servers, rules=load_gates(gates).rollout, promote_force=force,
                         shadow=shadow)
    typer.echo(result.summary())
    if result.decision != "promoted":
        raise typer.Exit(1)
