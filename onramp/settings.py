"""Settings in one place.

Every path, port and URI onramp uses is a field of :class:`Settings`. Precedence is decided
in one function, :func:`load_settings`: explicit arguments > config file > environment
(``ONRAMP_*``) > the embedded defaults below. The config file is TOML, ``$ONRAMP_CONFIG`` or
``$ONRAMP_HOME/config.toml``; its keys are the field names (unknown keys are refused).
A config file is an explicit choice of the user, so it beats the ambient environment.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from onramp.errors import ConfigError


def _default_home() -> Path:
    return Path(os.environ.get("ONRAMP_HOME") or Path.home() / ".onramp")


class Settings(BaseSettings):
    """onramp's configuration. Environment variables are ``ONRAMP_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="ONRAMP_", extra="forbid", validate_default=True)

    home: Path = Field(default_factory=_default_home, description="Root of all local state.")
    cache_dir: Path | None = Field(
        default=None, description="Shared cache (reference model, downloads). Default: $ONRAMP_HOME/cache."
    )
    engines_dir: Path | None = Field(default=None, description="Built engines. Default: $ONRAMP_HOME/engines.")

    # Hub
    hf_endpoint: str | None = Field(
        default=None, description="Hugging Face Hub (or mirror) URL; default: $HF_ENDPOINT or the public Hub."
    )
    hub_max_download_gb: float = Field(
        default=200.0, gt=0, description="Largest pull from the Hub, in GB (1e9 bytes), of the files onramp downloads.")
    hub_max_files: int = Field(default=200, ge=1, description="Most files one pull from the Hub may download.")
    hub_timeout_s: float = Field(
        default=30.0, gt=0, description="Timeout of each Hub HTTP call (connect, and each read of a download).")
    mirror_host: str = "127.0.0.1"
    mirror_port: int = 8090
    mirror_dir: Path | None = Field(default=None, description="Git repos of the loopback mirror.")

    # MLflow
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Default: sqlite:///$ONRAMP_HOME/mlflow.db (embedded)."
    )
    mlflow_artifact_root: str | None = Field(
        default=None, description="Default: $ONRAMP_HOME/mlartifacts; s3://bucket/prefix for S3."
    )
    mlflow_port: int = 5000

    # Prefect
    prefect_port: int = 4200

    # API server
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    keys_file: Path | None = Field(default=None, description="Hashed API keys. Default: $ONRAMP_HOME/keys.json.")

    # Watcher and webhook (flows)
    watch_repos: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hub repo ids (ORG/NAME) whose new revisions are onboarded; comma-separated in the environment.",
    )
    watch_orgs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hub authors/orgs whose models are all watched; comma-separated in the environment.",
    )
    watch_interval_s: int = Field(default=300, ge=5, description="How often the watch flow polls the Hub.")
    webhook_secret: str | None = Field(
        default=None,
        description="Secret the Hub sends in X-Webhook-Secret to POST /hooks/huggingface; unset = webhook off.",
    )

    @field_validator("watch_repos", "watch_orgs", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.home = self.home.expanduser()
        if self.cache_dir is None:
            self.cache_dir = self.home / "cache"
        if self.engines_dir is None:
            self.engines_dir = self.home / "engines"
        if self.mirror_dir is None:
            self.mirror_dir = self.home / "mirror"
        if self.keys_file is None:
            self.keys_file = self.home / "keys.json"
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{self.home / 'mlflow.db'}"
        if self.mlflow_artifact_root is None:
            self.mlflow_artifact_root = str(self.home / "mlartifacts")
        if self.hf_endpoint is None:
            self.hf_endpoint = os.environ.get("HF_ENDPOINT") or None
        return self

    @property
    def mirror_url(self) -> str:
        return f"http://{self.mirror_host}:{self.mirror_port}"


def _config_file(explicit: Path | None, overrides: dict[str, Any]) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist", "pass an existing TOML file or drop --config")
        return explicit
    env = os.environ.get("ONRAMP_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"ONRAMP_CONFIG={env} does not exist", "point ONRAMP_CONFIG at a TOML file or unset it")
        return path
    home = overrides.get("home") or _default_home()
    path = Path(home) / "config.toml"
    return path if path.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: ``overrides`` (e.g. CLI flags) > config file > environment > defaults.

    ``None`` overrides are ignored, so CLI options can be passed through as they are.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    path = _config_file(config_file, overrides)
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}", "fix the TOML syntax") from None
    # pydantic-settings ranks init kwargs above the environment: file values, then overrides.
    merged: dict[str, Any] = {**file_values, **overrides}
    try:
        return Settings(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "settings"
        source = f" (from {path})" if path is not None and loc in file_values else ""
        raise ConfigError(
            f"bad setting {loc!r}{source}: {first['msg']}",
            f"see the Configuration table in README.md for valid keys (ONRAMP_{loc.upper()})",
        ) from None
