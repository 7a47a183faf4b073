"""A third-party backend is one file: registered once through the ``onramp.backends`` entry-point
group (as an installed package declares it), then built with, served and evaluated through the
same code paths as the built-in backends, and sized by the planner with its own facts."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = textwrap.dedent('''
    """onramp_echo_backend: a whole onramp backend in one file."""
    import json
    from pathlib import Path

    from builders.errors import BuildUnavailable
    from builders.manifest import Layout
    from serving.engine import Delta, EngineInfo


    class EchoEngine:
        backend = "echo"

        def __init__(self, engine_dir, name):
            self._info = EngineInfo(name=name, backend="echo", version="1", max_context=64, max_concurrent=1,
                                    engine_dir=str(engine_dir))

        @classmethod
        def from_manifest(cls, engine_dir, manifest, *, name, **options):
            return cls(engine_dir, name)

        def describe(self):
            return self._info

        async def stream(self, request):
            text = request.prompt or " ".join(m.content for m in request.messages or ())
            yield Delta(text=text.upper(), prompt_tokens=len(text.split()), completion_tokens=len(text.split()),
                        finish_reason="stop")

        def abort(self, request_id):
            pass

        def close(self):
            pass


    class EchoBackend:
        name = "echo"
        engine = "onramp_echo_backend:EchoEngine"
        embedding_bytes = 0.25
        max_tp = 1

        def version(self):
            return "0.1"

        def toolchain(self):
            return {"onramp-echo-backend": "0.1"}

        def default_layout(self, facts, quant):
            return Layout(hardware="echo-box", dtype=facts.dtype, quantization=quant)

        def layout_dtype(self, precision, facts):
            return "fp16"

        def commands_text(self, checkpoint, out_dir, layout, facts):
            return f"echo {checkpoint} > {out_dir}/echo.json\\n"

        def check_available(self):
            pass

        def build(self, checkpoint, out_dir, layout, facts, log_path):
            (Path(out_dir) / "echo.json").write_text(json.dumps({"layers": facts.layers}))

        def engine_problem(self, engine_dir):
            return None if (Path(engine_dir) / "echo.json").is_file() else "has no echo.json"

        def lm_eval_model(self, engine_dir, workdir):
            return "dummy", {}

        def logits_model(self, engine_dir):
            raise BuildUnavailable("unavailable: echo engines have no logits", "use another backend")
''')


@pytest.fixture
def echo_package(tmp_path, monkeypatch):
    """The plugin as pip would install it: the module and a dist-info declaring its entry point."""
    site = tmp_path / "site"
    dist = site / "onramp_echo_backend-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "onramp_echo_backend.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: onramp-echo-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[onramp.backends]\necho = onramp_echo_backend:EchoBackend\n")
    monkeypatch.syspath_prepend(str(site))
    from builders import backends

    backends.rescan()
    yield site
    backends._REGISTRY.pop("echo", None)
    backends._LOADED.pop("echo", None)
    sys.modules.pop("onramp_echo_backend", None)


def test_a_backend_package_is_discovered_built_served_evaluated_and_planned(echo_package, tiny_llama, tmp_path):
    from builders import build_engine, read_manifest
    from builders.backends import backend_names, get_backend
    from builders.facts import inspect_checkpoint
    from builders.hardware import Hardware
    from builders.manifest import hash_files, write_manifest
    from builders.planner import plan
    from evals.errors import EvalError
    from evals.kld import engine_logits_model
    from evals.quality import check_engine_dir
    from serving.engine import GenerationRequest
    from serving.engines import backends as engine_backends
    from serving.engines import load_engine

    assert {"echo", "openvino", "tensorrt_llm"} <= set(backend_names())
    assert "echo" in engine_backends()
    assert get_backend("echo").name == "echo"

    engine_dir = build_engine(tiny_llama, backend="echo", quant="int8", out_root=tmp_path / "engines")
    manifest = read_manifest(engine_dir)
    assert manifest.backend == "echo" and manifest.toolchain == {"onramp-echo-backend": "0.1"}
    assert "--echo-int8-tp1--" in engine_dir.name

    engine = load_engine(engine_dir)
    assert type(engine).__module__ == "onramp_echo_backend" and engine.describe().backend == "echo"

    async def answer() -> str:
        return "".join([d.text async for d in engine.stream(GenerationRequest(request_id="1", prompt="hi there"))])

    assert asyncio.run(answer()) == "HI THERE"

    assert check_engine_dir(engine_dir) == "echo"
    (engine_dir / "echo.json").unlink()  # a build that finished without it: only the backend knows it needs it
    write_manifest(engine_dir, manifest.model_copy(update={"files": hash_files(engine_dir)}))
    with pytest.raises(EvalError, match="has no echo.json"):
        check_engine_dir(engine_dir)
    with pytest.raises(EvalError, match="echo engines have no logits"):
        engine_logits_model(engine_dir)

    facts = inspect_checkpoint(tiny_llama)
    box = Hardware("echo-box", "an echo accelerator", "accelerator", 64.0, 1, ("int8",), "echo")
    row = plan(facts, box).option(1, "int8")
    embed = facts.vocab_size * facts.hidden_size * (1 if facts.tied_embeddings else 2)
    assert row.dtype == "fp16"
    assert row.weights_gib == round(((facts.params - embed) * 1.0 + embed * 0.25) / (1 << 30), 3)
    assert plan(facts, box).option(2, "int8").reason == "the echo-box target runs one process (TP 1 only)"


def test_the_built_in_backends_are_declared_as_entry_points():
    import tomllib

    from builders.backends import _BUILTIN, ENTRY_POINT_GROUP

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == _BUILTIN
