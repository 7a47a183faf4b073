import subprocess
import sys


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "onramp", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("reference-model", "mirror", "config"):
        assert command in proc.stdout


def test_config_prints_effective_settings(onramp_home):
    proc = run_cli("config")
    assert proc.returncode == 0, proc.stderr
    assert f"home = {onramp_home}" in proc.stdout


def test_bad_setting_is_one_line(monkeypatch):
    monkeypatch.setenv("ONRAMP_API_PORT", "eighty")
    proc = run_cli("config")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "api_port" in lines[0] and "Traceback" not in proc.stderr
