"""``onramp serve`` and ``onramp keys``. Nothing heavy is imported at module level."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register", "serve"]

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
    ctx: typer.Context,
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
    drain_timeout: float = typer.Option(30.0, "--drain-timeout", min=0,
                                        help="On SIGTERM: new requests get 503, /readyz 503; requests in flight "
                                        "get this many seconds to finish before the server exits."),
    max_n: int = typer.Option(8, "--max-n", min=1, max=128, help="Most choices (n) one request may ask for."),
    swap_timeout: float = typer.Option(600.0, "--swap-timeout", min=0.001,
                                       help="Seconds an engine may take to load and warm up in a swap."),
    registry_poll: float = typer.Option(5.0, "--registry-poll", min=0.01,
                                        help="With --registry: seconds between polls of the production and "
                                             "canary aliases."),
    registry_max_backoff: float = typer.Option(
        300.0, "--registry-max-backoff", min=0.01,
        help="With --registry: longest wait before retrying a production version that failed to load."),
) -> None:
    """Serve engines behind the OpenAI- and pplx-compatible API."""
    from onramp.settings import load_settings
    from serving.errors import ServingError

    settings = load_settings(api_host=host, api_port=port, keys_file=keys_file)
    if keys_file is not None and no_auth:
        raise ServingError("--keys-file and --no-auth contradict each other", "pass one of them")
    engines = _parse_engines(engine)
    if not engines and not registry:
        raise ServingError("nothing to serve", "pass --engine NAME=ENGINE_DIR (repeatable) or --registry")
    from serving.app import ServeConfig, build_app

    hooks_start, hooks_stop, resolver = [], [], None
    swap_roots = [settings.engines_dir, settings.home / "registry" / "cache"]
    if registry:
        from serving.follow import RegistryFollower

        follower = RegistryFollower(settings, interval=registry_poll, max_backoff=registry_max_backoff)
        hooks_start, hooks_stop, resolver = [follower.start], [follower.stop], follower.resolve
        from serving.routing import canary_hooks

        canary_start, canary_stop = canary_hooks(follower.registry, interval=registry_poll)
        hooks_start, hooks_stop = [*hooks_start, canary_start], [canary_stop, *hooks_stop]
        swap_roots.append(follower.cache_dir)
    config = ServeConfig(engines=engines, auth=not no_auth, keys_file=settings.keys_file, max_queue=max_queue,
                         engine_options={"cache_size_gb": cache_size_gb} if cache_size_gb else {},
                         log_prompts=log_prompts,
                         resolve_version=resolver, default_max_tokens=default_max_tokens,
                         swap_roots=swap_roots, swap_timeout_s=swap_timeout, max_n=max_n)
    # routers the caller mounts (the root CLI hands over flows' Hub webhook): serving imports no flows
    routers = (ctx.obj or {}).get("serve_routers", list)()
    app = build_app(config, startup_hooks=hooks_start, shutdown_hooks=hooks_stop, settings=settings,
                    routers=routers)
    import logging

    from serving.drain import run_server

    logging.getLogger("serving").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.secho(f"serving {', '.join(engines) or '(registry)'} on http://{settings.api_host}:{settings.api_port} "
                f"(auth {'off' if no_auth else 'on'}); GET /readyz says when the engines are live", err=True)
    run_server(app, host=settings.api_host, port=settings.api_port, drain_timeout=drain_timeout)


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="A name for the key (who or what uses it)."),
    admin: bool = typer.Option(False, "--admin", help="Also allow the admin endpoints (swap)."),
    keys_file: Path | None = typer.Option(None, "--keys-file", help="Default: ONRAMP_KEYS_FILE."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute this key may send (default: no limit)."),
    tpm: int | None = typer.Option(None, "--tpm", help="Prompt + completion tokens per minute (default: no limit)."),
) -> None:
    """Create a key; it is printed once and only its sha256 is stored."""
    from onramp.settings import load_settings
    from serving.auth import create_key

    settings = load_settings(keys_file=keys_file)
    raw = create_key(settings.keys_file, name, admin=admin, rpm=rpm, tpm=tpm)
    typer.secho(f"key {name!r} stored (hashed) in {settings.keys_file}; it is shown only now:", err=True)
    typer.echo(raw)


@keys_app.command("list")
def keys_list(keys_file: Path | None = typer.Option(None, "--keys-file")) -> None:
    """List key names, scopes, limits and usage so far (never the keys)."""
    from onramp.settings import load_settings
    from serving.auth import list_keys
    from serving.usage import read_usage, usage_file

    settings = load_settings(keys_file=keys_file)
    usage = read_usage(usage_file(settings.keys_file))
    typer.echo("name\tscopes\trpm\ttpm\trequests\tprompt_tokens\tcompletion_tokens")
    for key in list_keys(settings.keys_file):
        u = usage.get(key.name, {})
        typer.echo(f"{key.name}\t{','.join(key.scopes)}\t{key.rpm or '-'}\t{key.tpm or '-'}\t"
                   f"{u.get('requests', 0)}\t{u.get('prompt_tokens', 0)}\t{u.get('completion_tokens', 0)}")


@keys_app.command("revoke")
def keys_revoke(name: str = typer.Argument(...), keys_file: Path | None = typer.Option(None, "--keys-file")) -> None:
    """Remove a key from the keys file."""
    from onramp.settings import load_settings
    from serving.auth import revoke_key

    revoke_key(load_settings(keys_file=keys_file).keys_file, name)
    typer.echo(f"revoked {name}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
