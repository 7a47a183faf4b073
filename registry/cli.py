"""``onramp models``, ``onramp promote NAME VERSION``, ``onramp rollback NAME`` (``onramp rollout``,
which judges metrics, is in evals/cli.py).

Nothing heavy at import: MLflow is imported inside the commands.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict

import typer

__all__ = ["mlflow_errors", "open_registry", "register"]


def open_registry():
    import os

    from registry.client import Registry

    # An interactive command should fail in seconds, not after MLflow's default ~7 HTTP retries
    # with exponential backoff (minutes), when the tracking server is down. The user's own
    # settings of these variables win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    return Registry()


@contextmanager
def mlflow_errors():
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
        with mlflow_errors():
            found = open_registry().list_models()
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
        with mlflow_errors():
            registry = open_registry()
            previous = registry.promote(name, version, force=force)
            now = registry.alias_version(name, "production")
        if previous is None:
            typer.echo(f"{name}: production = version {now}")
        else:
            typer.echo(f"{name}: production = version {now} (was {previous}; `onramp rollback {name}` restores it)")

    @app.command("rollback")
    def rollback(name: str = typer.Argument(..., help="Registered model.")) -> None:
        """Point NAME's production alias back at the version it had before the last promote."""
        with mlflow_errors():
            restored = open_registry().rollback(name)
        typer.echo(f"{name}: production = version {restored} (rolled back)")
