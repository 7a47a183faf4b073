"""The package layering and faces: who may import whom, public names, one CLI error path."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOWER = ("onramp", "builders", "serving", "registry", "evals")  # below flows: none of them imports it
AREA_CLIS = ("builders", "serving", "registry", "evals", "flows")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", LOWER)
def test_no_package_below_flows_imports_flows(package):
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / package).rglob("*.py"))
                 if any(m == "flows" or m.startswith("flows.") for m in _imports(p))]
    assert offenders == [], f"{package} imports flows in {offenders}"


@pytest.mark.parametrize("area", AREA_CLIS)
def test_area_clis_do_not_import_the_root_cli(area):
    assert "onramp.cli" not in _imports(ROOT / area / "cli.py")


@pytest.mark.parametrize("package", ["onramp", "builders", "serving", "evals", "flows"])
def test_packages_declare_their_public_names(package):
    module = importlib.import_module(package)
    assert module.__all__, f"{package}/__init__.py has no __all__"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name} is declared but does not resolve"


def test_onramp_serve_mounts_the_webhook_it_is_handed():
    """serving mounts the routers its caller passes; the root CLI hands it flows' webhook."""
    from onramp.cli import SERVE_ROUTERS, _serve_routers
    from serving.app import ServeConfig, build_app

    assert SERVE_ROUTERS == ("flows.webhook:router",)
    without = set(build_app(ServeConfig(auth=False)).openapi()["paths"])
    with_hooks = set(build_app(ServeConfig(auth=False), routers=_serve_routers()).openapi()["paths"])
    assert "/hooks/huggingface" not in without
    assert with_hooks - without == {"/hooks/huggingface"}


def test_an_area_error_is_printed_once_by_the_root_cli():
    from typer.testing import CliRunner

    from onramp.cli import app

    result = CliRunner().invoke(app, ["serve", "--keys-file", "/nonexistent/keys.json", "--no-auth"])
    assert result.exit_code == 1
    assert result.output.count("error: ") == 1 and "contradict each other" in result.output
    assert "Traceback" not in result.output
