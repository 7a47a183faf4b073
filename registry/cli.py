"""``onramp models``, ``onramp promote NAME VERSION``, ``onramp rollback NAME``.

Nothing heavy at import: MLflow is imported inside the commands.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict

import typer

__all__ = ["register"]


def _registry():
    import os

    from registry.client import Registry

    # An interactive command should fail in seconds, not after MLflow's default ~7 HTTP retries
    # with exponential backoff (minutes), when the tracking server is down. The user's own
    # settings of these variables win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    return Registry()


@contextmanager
def _mlflow_errors():
    """MLflow's own errors (a locked database, a server error) as a RegistryError, which the root
    CLI prints like every other error."""
    from mlflow.exceptions import MlflowException

    from registry.errors import RegistryError

    try:
        yield
    except MlflowException as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:300]
        raise RegistryError(f"MLflow failed: {first}",
                            "check ONRAMP_MLFLOW_TRACKING_URI (`onramp config`) and that the backend is up") from None


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """Registered models: versions, aliases (production, candidate, ...) and gate results."""
        with _mlflow_errors():
            found = _registry().list_models()
        if as_json:
            typer.echo(json.dumps([asdict(m) for m in found], indent=2))
            return
        if not found:
            typer.echo("no registered models (register one with the onboard flow)")
            return
        for model in found:
            aliases = ", ".join(f"{a}={v}" for a, v in sorted(model.aliases.items())) or "no aliases"
            typer.secho(f"{model.name}  ({aliases})", bold=True)
            typer.echo(f"  {'version':>7}  {'gate':6}  {'backend':9}  {'layout':22}  {'revision':12}  aliases")
            for v in model.versions:
                typer.echo(
                    f"  {v.version:>7}  {v.gate:6}  {v.tags.get('backend', ''):9}  "
                    f"{v.tags.get('layout', ''):22}  {v.tags.get('hf_revision', '')[:12]:12}  "
                    f"{','.join(v.aliases)}"
                )

    @app.command("promote")
    def promote(
        name: str = typer.Argument(..., help="Registered model, ORG--NAME of its Hub repo (onramp models lists them)."),
        version: str = typer.Argument(..., help="Version number (or an alias such as candidate)."),
        force: bool = typer.Option(False, "--force", help="Promote even a version whose gates failed, or one "
                                                        "built from an older Hub revision than production's."),
    ) -> None:
        """Point NAME's production alias at VERSION; the previous one is kept for rollback."""
        with _mlflow_errors():
            registry = _registry()
            previous = registry.promote(name, version, force=force)
            now = registry.alias_version(name, "production")
        if previous is None:
            typer.echo(f"{name}: production = version {now}")
        else:
            typer.echo(f"{name}: production = version {now} (was {previous}; `onramp rollback {name}` restores it)")

    @app.command("rollback")
    def rollback(name: str = typer.Argument(..., help="Registered model.")) -> None:
        """Point NAME's production alias back at the version it had before the last promote."""
        with _mlflow_errors():
            restored = _registry().rollback(name)
        typer.echo(f"{name}: production = version {restored} (rolled back)")

    @app.command("rollout")
    def rollout_cmd(
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

        logging.getLogger("evals").setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(asctime)s %(message)s")
        servers = server or [s.strip() for s in os.environ.get("ONRAMP_ROLLOUT_SERVERS", "").split(",") if s.strip()]
        with _mlflow_errors():
            result = rollout(_registry(), name, version, steps=parse_steps(steps), window=parse_window(window),
                             servers=servers, rules=load_gates(gates).rollout, promote_force=force,
                             shadow=shadow)
        typer.echo(result.summary())
        if result.decision != "promoted":
            raise typer.Exit(1)
