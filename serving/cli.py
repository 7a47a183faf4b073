"""``onramp serve`` and ``onramp keys``. Nothing heavy is imported at module level."""

from __future__ import annotations

import os
from pathlib import Path

import typer

keys_app = typer.Typer(help="API keys of the server (stored hashed in the keys file).", no_args_is_help=True)


def _parse_engines(specs: list[str]) -> dict[str, Path]:
    from serving.errors import ServingError

    engines: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ServingError(f"--engine {spec!r} is not NAME=ENGINE_DIR",
                               "write it as --engine my-model=/path/to/engine (the dir holding manifest.json)")
        if name in engines:
            raise ServingError(f"--engine names {name!r} twice", "give each served name once")
        engine_dir = Path(path).expanduser()
        if not (engine_dir / "manifest.json").is_file():
            raise ServingError(f"--engine {name}={engine_dir}: no manifest.json there, so it is not a built engine",
                               "pass a directory made by `onramp build` (it prints it)")
        engines[name] = engine_dir
    return engines


def serve(
    engine: list[str] = typer.Option([], "--engine", help="NAME=ENGINE_DIR; repeat for several models."),
    host: str | None = typer.Option(None, "--host", help="Default: ONRAMP_API_HOST or 127.0.0.1."),
    port: int | None = typer.Option(None, "--port", help="Default: ONRAMP_API_PORT or 8000."),
    keys_file: Path | None = typer.Option(None, "--keys-file", help="Hashed API keys (default: ONRAMP_KEYS_FILE)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Accept requests without a key (local tests only)."),
    max_queue: int = typer.Option(128, "--max-queue", help="Requests waiting + running per model; beyond: 429."),
    default_max_tokens: int | None = typer.Option(
        None, "--default-max-tokens", help="Cap for requests that set no max_tokens (default: the context left)."),
    cache_size_gb: int | None = typer.Option(None, "--cache-size-gb",
                                             help="OpenVINO KV cache per engine, GB (default: the engine "
                                             "manifest's runtime.scheduler.cache_size, 1 GB)."),
    registry: bool = typer.Option(False, "--registry",
                                  help="Also serve each registered model's 'production' alias (as ORG--NAME, and "
                                       "as NAME where no other registered model has that NAME); swap when it moves."),
    log_prompts: bool = typer.Option(False, "--log-prompts", help="Log prompt text (off by default)."),
) -> None:
    """Serve engines behind the OpenAI- and pplx-compatible API."""
    from onramp.cli import fail
    from onramp.errors import OnrampError
    from onramp.settings import load_settings

    try:
        settings = load_settings(api_host=host, api_port=port, keys_file=keys_file)
        if keys_file is not None and no_auth:
            fail("--keys-file and --no-auth contradict each other — pass one of them")
        engines = _parse_engines(engine)
        if not engines and not registry:
            fail("nothing to serve — pass --engine NAME=ENGINE_DIR (repeatable) or --registry")
        from serving.app import ServeConfig, build_app

        hooks_start, hooks_stop, resolver = [], [], None
        if registry:
            hooks_start, hooks_stop, resolver = _registry_hooks(settings)
        config = ServeConfig(engines=engines, auth=not no_auth, keys_file=settings.keys_file, max_queue=max_queue,
                             engine_options={"cache_size_gb": cache_size_gb} if cache_size_gb else {},
                             log_prompts=log_prompts,
                             resolve_version=resolver, default_max_tokens=default_max_tokens)
        app = build_app(config, startup_hooks=hooks_start, shutdown_hooks=hooks_stop, settings=settings)
    except OnrampError as err:
        fail(err)
    import logging

    import uvicorn

    logging.getLogger("serving").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.secho(f"serving {', '.join(engines) or '(registry)'} on http://{settings.api_host}:{settings.api_port} "
                f"(auth {'off' if no_auth else 'on'}); GET /readyz says when the engines are live", err=True)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")


def _registry_hooks(settings):
    """Wire registry.watch.AliasWatcher when the registry package provides it."""
    from serving.errors import ServingError

    try:
        from registry.client import Registry
        from registry.names import short_aliases
        from registry.watch import AliasWatcher
    except ModuleNotFoundError as exc:
        raise ServingError(f"--registry needs registry.watch ({exc.name} is missing)",
                           "serve explicit engines with --engine NAME=DIR") from None
    reg = Registry(settings)
    state: dict = {}

    async def start(app):
        slots = app.state.slots

        async def on_change(name: str, version: str, engine_dir: Path) -> None:
            await slots.swap(name, engine_dir, version=version)

        def on_names(names: list[str]) -> None:  # short names, where no two registered models share one
            slots.set_aliases(short_aliases(names))

        from serving.routing import POLL_ENV, CanaryFollower, Router

        interval = float(os.environ.get(POLL_ENV, "5"))
        watcher = AliasWatcher(reg, alias="production", on_change=on_change, on_names=on_names, interval=interval)
        state["watcher"] = watcher
        await watcher.start()
        router = Router()
        app.state.service.router = router
        state["canary"] = CanaryFollower(reg, slots, router, interval=interval)
        await state["canary"].start()

    async def stop(app):
        for key in ("canary", "watcher"):
            if key in state:
                await state[key].stop()

    def resolve(name: str, version: str) -> Path:
        return Path(reg.fetch(name, version))

    return [start], [stop], resolve


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="A name for the key (who or what uses it)."),
    admin: bool = typer.Option(False, "--admin", help="Also allow the admin endpoints (swap)."),
    keys_file: Path | None = typer.Option(None, "--keys-file", help="Default: ONRAMP_KEYS_FILE."),
) -> None:
    """Create a key; it is printed once and only its sha256 is stored."""
    from onramp.cli import fail
    from onramp.errors import OnrampError
    from onramp.settings import load_settings
    from serving.auth import create_key

    try:
        settings = load_settings(keys_file=keys_file)
        raw = create_key(settings.keys_file, name, admin=admin)
    except OnrampError as err:
        fail(err)
    typer.secho(f"key {name!r} stored (hashed) in {settings.keys_file}; it is shown only now:", err=True)
    typer.echo(raw)


@keys_app.command("list")
def keys_list(keys_file: Path | None = typer.Option(None, "--keys-file")) -> None:
    """List key names and scopes (never the keys)."""
    from onramp.cli import fail
    from onramp.errors import OnrampError
    from onramp.settings import load_settings
    from serving.auth import list_keys

    try:
        settings = load_settings(keys_file=keys_file)
        for key in list_keys(settings.keys_file):
            typer.echo(f"{key.name}\t{','.join(key.scopes)}")
    except OnrampError as err:
        fail(err)


@keys_app.command("revoke")
def keys_revoke(name: str = typer.Argument(...), keys_file: Path | None = typer.Option(None, "--keys-file")) -> None:
    """Remove a key from the keys file."""
    from onramp.cli import fail
    from onramp.errors import OnrampError
    from onramp.settings import load_settings
    from serving.auth import revoke_key

    try:
        settings = load_settings(keys_file=keys_file)
        revoke_key(settings.keys_file, name)
    except OnrampError as err:
        fail(err)
    typer.echo(f"revoked {name}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
