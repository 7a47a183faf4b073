"""``onramp up``: every service of onramp on one machine, as child processes.

- the Prefect server (API + UI) on ``prefect_port``, its database under ``$ONRAMP_HOME/prefect``,
  with Prefect's basic auth on (``PREFECT_SERVER_API_AUTH_STRING``: a fresh random
  ``onramp:<secret>`` per start; every child gets it as ``PREFECT_API_AUTH_STRING``, the UI asks
  for it) and CORS limited to the UI's own origin;
- the MLflow server (UI) on ``mlflow_port`` over the same tracking store the flows write to
  (``mlflow_tracking_uri``, artifacts at ``mlflow_artifact_root``);
- the deployments and work pools (``flows/deploy.py``) and a worker for the ``cpu`` pool;
- the API server, ``onramp serve --registry`` on ``api_port``: it serves each registered model's
  ``production`` version and swaps when the alias moves; an admin API key named ``onramp-up`` is
  made at each start and printed.

Each child's output goes to ``$ONRAMP_HOME/logs/<name>.log``. The URLs, the API key and Prefect's
auth string are written to ``$ONRAMP_HOME/up.json`` (created 0600), which ``onramp onboard`` reads
to use the running Prefect server. :meth:`Up.stop` (Ctrl-C in ``onramp up``) stops the children, newest first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flows.errors import UpError
from flows.prefect_env import UP_STATE, new_auth_string, prefect_env, write_up_state
from onramp.process import Child, ChildExited, ChildTimeout, below_500, port_in_use, start_child, stop_children, \
    wait_healthy
from onramp.settings import Settings

KEY_NAME = "onramp-up"
SERVICES = ("prefect", "mlflow", "api", "worker")
Progress = Callable[[str], None]


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``ONRAMP_*`` variables, so every child sees exactly this configuration."""
    env: dict[str, str] = {}
    for key, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        env[f"ONRAMP_{key.upper()}"] = str(value)
    return env


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    return not port_in_use(host, port)


class Up:
    """Start, watch and stop onramp's services. ``with Up(settings) as up:`` or start()/stop()."""

    def __init__(self, settings: Settings, *, targets: list[str] | None = None, profile: str = "quick",
                 progress: Progress | None = None, start_timeout: float = 240.0, worker_poll_s: int = 3,
                 services: tuple[str, ...] = SERVICES, prefect_api: str | None = None,
                 prefect_auth: str | None = None):
        unknown = set(services) - set(SERVICES)
        if unknown or ("worker" in services and "prefect" not in services and not prefect_api):
            raise UpError(f"bad services {services}", f"pick from {', '.join(SERVICES)}; the worker needs prefect")
        self.services = services
        self.settings = settings
        self.targets = targets or ["cpu"]
        self.profile = profile
        self.say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.start_timeout = start_timeout
        self.worker_poll_s = worker_poll_s
        self.children: list[Child] = []
        self.health: dict[str, str] = {}  # child name -> the URL that answers when it is up
        self.logs = settings.home / "logs"
        self.api_key: str | None = None
        host = "127.0.0.1"
        self.prefect_url = f"http://{host}:{settings.prefect_port}"
        self.prefect_api = prefect_api or f"{self.prefect_url}/api"
        # basic auth of our Prefect server (or of an outside one given with prefect_api)
        self.prefect_auth = prefect_auth or (new_auth_string() if "prefect" in services else None)
        self.mlflow_url = f"http://{host}:{settings.mlflow_port}"
        self.api_url = f"http://{settings.api_host}:{settings.api_port}"

    # ------------------------------------------------------------------ children

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ONRAMP_"))}
        env.update(settings_env(self.settings))
        env.update(prefect_env(self.settings, self.prefect_api, self.prefect_auth))
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(self.worker_poll_s)
        env["PREFECT_RUNNER_POLL_FREQUENCY"] = str(self.worker_poll_s)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job runners: the UI is all we need
        env["PYTHONUNBUFFERED"] = "1"
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        return env

    def server_env(self) -> dict[str, str]:
        """The Prefect server's environment: its clients' plus the auth it requires, and CORS for
        the UI's own origin only (Prefect's default is ``*``)."""
        env = self.env()
        env["PREFECT_SERVER_API_AUTH_STRING"] = self.prefect_auth or ""
        env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] = self.prefect_url
        return env

    def _spawn(self, name: str, cmd: list[str], health: str | None, env: dict[str, str] | None = None) -> Child:
        child = start_child(cmd, log=self.logs / f"{name}.log", name=name, env=env or self.env(), append=True,
                            cwd=Path(__file__).resolve().parent.parent)
        self.children.append(child)
        if health:
            self.health[name] = health
        return child

    def _wait_healthy(self, children: list[Child]) -> None:
        def up(child: Child) -> None:
            self.say(f"  {child.name} is up ({time.monotonic() - child.started:.0f} s)")

        try:
            wait_healthy([(c, self.health[c.name]) for c in children if c.name in self.health],
                         timeout=self.start_timeout, ready=below_500, on_ready=up)
        except ChildExited as exc:
            raise UpError(f"{exc.child.name} exited at start (code {exc.code}): {exc.tail}",
                          f"see {exc.child.log}") from None
        except ChildTimeout as exc:
            names = ", ".join(c.name for c, _ in exc.pending)
            raise UpError(f"{names} did not answer within {self.start_timeout:.0f} s",
                          f"see the logs in {self.logs}") from None

    def _check_ports(self) -> None:
        s = self.settings
        for what, port, flag in (("prefect", s.prefect_port, "--prefect-port / ONRAMP_PREFECT_PORT"),
                                 ("mlflow", s.mlflow_port, "--mlflow-port / ONRAMP_MLFLOW_PORT"),
                                 ("api", s.api_port, "--api-port / ONRAMP_API_PORT")):
            if what in self.services and not port_free(port):
                raise UpError(f"port {port} for the {what} server is already in use",
                              f"stop what listens there (another `onramp up`?) or pass {flag}")

    def _make_key(self) -> str:
        from serving.auth import create_key, list_keys, revoke_key

        keys_file = self.settings.keys_file
        if any(k.name == KEY_NAME for k in list_keys(keys_file)):
            revoke_key(keys_file, KEY_NAME)
        return create_key(keys_file, KEY_NAME, admin=True)

    # ------------------------------------------------------------------ start / stop

    def start(self) -> dict:
        """Start everything; return the state written to up.json (URLs, API key)."""
        s = self.settings
        self._check_ports()
        py = sys.executable
        started = time.monotonic()
        want = set(self.services)
        try:
            self.say(f"starting {', '.join(self.services)} (logs: {self.logs})")
            wait: list[Child] = []
            if "prefect" in want:
                prefect = self._spawn("prefect-server", [py, "-m", "prefect", "server", "start", "--host",
                                                         "127.0.0.1", "--port", str(s.prefect_port)],
                                      f"{self.prefect_api}/health", env=self.server_env())
            if "mlflow" in want:
                if "://" not in s.mlflow_artifact_root:
                    Path(s.mlflow_artifact_root).mkdir(parents=True, exist_ok=True)
                if s.mlflow_tracking_uri.startswith("sqlite:///"):
                    # create the tracking database here, once: a fresh SQLite store initialised by
                    # `mlflow server` itself sometimes fails (SQLAlchemy CircularDependencyError)
                    from registry.client import Registry

                    Registry(s).experiment_id()
                wait.append(self._spawn("mlflow-server", [
                    py, "-m", "mlflow", "server", "--backend-store-uri", s.mlflow_tracking_uri,
                    "--default-artifact-root", s.mlflow_artifact_root, "--host", "127.0.0.1",
                    "--port", str(s.mlflow_port), "--workers", "1"], f"{self.mlflow_url}/health"))
            if "api" in want:
                self.api_key = self._make_key()
                wait.append(self._spawn("api-server", [py, "-m", "onramp", "serve", "--registry", "--host",
                                                       s.api_host, "--port", str(s.api_port)],
                                        f"{self.api_url}/healthz"))
            if "prefect" in want:
                self._wait_healthy([prefect])
            if "worker" in want:
                self.deploy()
                self._spawn("worker-cpu", [py, "-m", "prefect", "worker", "start", "--pool", "cpu", "--type",
                                           "process", "--name", "onramp-cpu"], None)
            self._wait_healthy(wait)
        except BaseException:
            self.stop()
            raise
        state = {
            "prefect_ui": self.prefect_url, "prefect_api": self.prefect_api, "mlflow": self.mlflow_url,
            "api": self.api_url, "api_key": self.api_key, "prefect_auth": self.prefect_auth, "logs": str(self.logs),
            "pids": {c.name: c.proc.pid for c in self.children}, "started": time.time(),
        }
        write_up_state(self.settings, state)
        self.say(f"all services up in {time.monotonic() - started:.0f} s")
        return state

    def deploy(self) -> None:
        """Create the work pools and deployments on the Prefect server (``python -m flows.deploy``)."""
        self.say("  creating work pools cpu, gpu and deployments onboard, watch, build-layout")
        root = str(Path(__file__).resolve().parent.parent)
        proc = subprocess.run([sys.executable, "-m", "flows.deploy"], env=self.env(), capture_output=True, text=True,
                              timeout=self.start_timeout, cwd=root)
        (self.logs / "deploy.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UpError(f"creating the deployments failed: {last}", f"see {self.logs / 'deploy.log'}")

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive()]

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the children (their whole process groups), newest first; remove up.json."""
        stop_children(reversed(self.children), timeout=timeout)
        self.children.clear()
        (self.settings.home / UP_STATE).unlink(missing_ok=True)

    def __enter__(self) -> Up:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
