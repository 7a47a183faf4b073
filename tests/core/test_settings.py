
import pytest

from onramp.errors import ConfigError
from onramp.settings import load_settings


def test_defaults_derive_from_home(onramp_home):
    s = load_settings()
    assert s.home == onramp_home
    assert s.engines_dir == onramp_home / "engines"
    assert s.mlflow_tracking_uri == f"sqlite:///{onramp_home / 'mlflow.db'}"
    assert s.mlflow_artifact_root == str(onramp_home / "mlartifacts")
    assert s.api_port == 8000 and s.mirror_port == 8090


def test_precedence_argument_over_file_over_environment(onramp_home, monkeypatch):
    monkeypatch.setenv("ONRAMP_API_PORT", "8101")
    monkeypatch.setenv("ONRAMP_MIRROR_PORT", "8102")
    monkeypatch.setenv("ONRAMP_PREFECT_PORT", "8103")
    (onramp_home / "config.toml").write_text("api_port = 9001\nmirror_port = 9002\n")
    s = load_settings(api_port=7001)
    assert s.api_port == 7001        # argument beats file and environment
    assert s.mirror_port == 9002     # file beats environment
    assert s.prefect_port == 8103    # environment beats default
    assert load_settings(api_port=None).api_port == 9001  # None arguments are ignored


def test_explicit_config_file_via_env(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('api_host = "0.0.0.0"\n')
    monkeypatch.setenv("ONRAMP_CONFIG", str(cfg))
    assert load_settings().api_host == "0.0.0.0"


def test_unknown_key_in_file_is_named(onramp_home):
    (onramp_home / "config.toml").write_text("api_prot = 1\n")
    with pytest.raises(ConfigError, match="api_prot"):
        load_settings()


def test_bad_value_is_named(monkeypatch):
    monkeypatch.setenv("ONRAMP_API_PORT", "eighty")
    with pytest.raises(ConfigError, match="api_port"):
        load_settings()


def test_broken_toml_and_missing_file(onramp_home, tmp_path):
    (onramp_home / "config.toml").write_text("api_port = = 1\n")
    with pytest.raises(ConfigError, match="config.toml"):
        load_settings()
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.toml")
