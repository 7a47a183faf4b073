"""``onramp up``, ``onramp onboard``, ``onramp watch`` and ``onramp demo``.

Nothing heavy at module level: Prefect is imported inside the commands, after
:func:`flows.prefect_env.configure_prefect` has pointed it at ``$ONRAMP_HOME/prefect``.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

__all__ = ["register"]


def _print_result(result) -> None:
    typer.echo(f"{result.repo}@{result.sha[:12]}: {result.message}")
    for o in result.layouts:
        if o.status in ("infeasible", "not selected"):
            continue
        line = f"  {o.key:<24} {o.status:<8} gate={o.gate or '-':<7} version={o.version or '-'}"
        if o.status == "failed":
            line += f"  ({o.reason})"
        typer.echo(line)
    typer.echo(f"  builds made: {result.builds_made}, evals run: {result.evals_run}")
    for label, url in result.links.items():
        typer.echo(f"  {label}: {url}")


def register(app: typer.Typer) -> None:
    @app.command("onboard")
    def onboard_cmd(
        repo: str = typer.Argument(..., help="Hub repo id, ORG/NAME."),
        revision: str = typer.Option("main", "--revision", help="Branch, tag or sha (pinned to a sha)."),
        targets: str = typer.Option("cpu", "--targets", help="Comma-separated hardware: cpu, a100-80gb, h100-80gb..."),
        precision: str | None = typer.Option(None, "--precision", help="int8/int4 (cpu), bf16/fp16/int8/fp8 "
                                                  "(gpu); several (int8,int4): each built and gated."),
        runtime_precision: str | None = typer.Option(None, "--runtime-precision",
                                                     help="cpu compute variants, each built and gated, preferred "
                                                     "in this order: e.g. f32-dq32,f32 (default f32)."),
        profile: str = typer.Option("quick", "--profile", help="Eval profile: quick or full (evals/profiles.yaml)."),
        gates: Path | None = typer.Option(None, "--gates", help="Gates YAML (default: evals/gates.yaml)."),
        no_latency: bool = typer.Option(False, "--no-latency", help="Skip the latency sweep."),
        approve: bool = typer.Option(False, "--approve", help="Wait for a human approval in the Prefect UI."),
        no_promote: bool = typer.Option(False, "--no-promote", help="Register, but do not promote."),
    ) -> None:
        """Onboard one revision: pull, plan, build, evaluate, gate, register, promote."""
        from pydantic import ValidationError

        from flows.errors import OnboardError
        from flows.prefect_env import configure_prefect
        from onramp.errors import OnrampError
        from onramp.settings import load_settings

        api = configure_prefect(load_settings())
        from flows.onboard import OnboardConfig, onboard

        try:
            config = OnboardConfig(repo=repo, revision=revision, targets=targets, precision=precision,
                                   runtime_precision=runtime_precision, profile=profile,
                                   gates=str(gates) if gates else None, latency=not no_latency,
                                   approve=approve, promote=not no_promote)
        except ValidationError as exc:
            first = exc.errors()[0]
            option = str(first["loc"][0]).replace("_", "-")
            raise OnboardError(f"bad --{option}: {str(first['msg']).removeprefix('Value error, ')}",
                               "see onramp onboard --help") from None
        if gates is not None and not gates.is_file():
            raise OnboardError(f"gates file {gates} does not exist", "pass an existing YAML to --gates")
        typer.secho(f"onboarding {repo}@{revision} on {api or 'an ephemeral Prefect API'}", err=True)
        state = onboard(config, return_state=True)
        if state.is_completed():
            _print_result(state.result())
            return
        try:
            state.result()
        except OnrampError:
            raise
        except Exception as exc:  # noqa: BLE001 (a task's own error, already logged by Prefect)
            raise OnboardError(f"onboarding {repo}@{revision} failed: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:300]}") from None

    @app.command("watch")
    def watch_cmd() -> None:
        """Poll the Hub once for new revisions of the watch list and emit their events."""
        from flows.prefect_env import configure_prefect
        from onramp.settings import load_settings

        configure_prefect(load_settings())
        from flows.watch import watch

        for revision in watch():
            typer.echo(f"{revision.repo}@{revision.sha}")

    @app.command("up")
    def up_cmd(
        prefect_port: int | None = typer.Option(None, "--prefect-port", help="Default: ONRAMP_PREFECT_PORT, 4200."),
        mlflow_port: int | None = typer.Option(None, "--mlflow-port", help="Default: ONRAMP_MLFLOW_PORT or 5000."),
        api_port: int | None = typer.Option(None, "--api-port", help="Default: ONRAMP_API_PORT or 8000."),
    ) -> None:
        """Start the Prefect server, MLflow server, deployments + worker and the API server; Ctrl-C stops all."""
        from flows.errors import UpError
        from flows.up import Up
        from onramp.settings import load_settings

        settings = load_settings(prefect_port=prefect_port, mlflow_port=mlflow_port, api_port=api_port)
        up = Up(settings)
        state = up.start()
        typer.echo(f"Prefect UI:   {state['prefect_ui']}  (login: {state['prefect_auth']}; in up.json)")
        typer.echo(f"MLflow UI:    {state['mlflow']}")
        typer.echo(f"API:          {state['api']}/v1  (OpenAI-compatible; pplx-api: {state['api']}/chat/completions)")
        typer.echo(f"API key:      {state['api_key']}  (admin; shown once, made anew at each start)")
        typer.echo(f"webhook:      {state['api']}/hooks/huggingface  "
                   f"({'secret set' if settings.webhook_secret else 'off: set ONRAMP_WEBHOOK_SECRET'})")
        watched = ", ".join(settings.watch_repos + settings.watch_orgs) or "nothing (set watch_repos)"
        typer.echo(f"watching:     {watched} every {settings.watch_interval_s} s")
        typer.echo(f"logs:         {state['logs']}")
        typer.echo("Ctrl-C stops everything.")
        try:
            while True:
                time.sleep(1)
                dead = up.dead()
                if dead:
                    child = dead[0]
                    up.stop()
                    raise UpError(f"{child.name} stopped (code {child.proc.returncode}): {child.log_tail()}",
                                  f"see {child.log}")
        except KeyboardInterrupt:
            typer.secho("stopping...", err=True)
        finally:
            up.stop()

    @app.command("demo")
    def demo_cmd(
        keep: bool = typer.Option(False, "--keep", help="Keep the services running at the end (Ctrl-C stops)."),
    ) -> None:
        """The whole story, offline: mirror, up, onboard, chat, new revision, watcher, swap."""
        from flows.demo import run_demo

        run_demo(keep=keep)
