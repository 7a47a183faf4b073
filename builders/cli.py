"""``onramp plan SOURCE --hardware NAME`` and ``onramp build SOURCE --backend openvino --quant int8``.

Nothing heavy at import: the planner and builders are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        source: str = typer.Argument(..., help="A local checkpoint dir (config.json) or a Hub repo id ORG/NAME."),
        hardware: str = typer.Option(..., "--hardware", help="a100-40gb, a100-80gb, h100-80gb or cpu."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        revision: str | None = typer.Option(None, "--revision", help="Hub revision (branch, tag or sha)."),
        seq_len: int | None = typer.Option(None, "--seq-len",
                                           help="Tokens per sequence (default 4096 or max positions)."),
        usable_fraction: float = typer.Option(0.90, "--usable-fraction", help="Share of device memory usable."),
        workspace_gib: float = typer.Option(2.0, "--workspace-gib", help="Activation workspace per device (GiB)."),
        memory_gib: float | None = typer.Option(None, "--memory-gib", help="Override the device memory (GiB)."),
    ) -> None:
        """List the layouts (TP x precision) of SOURCE on HARDWARE: feasible ones with KV cache and max
        batch, rejected ones with their reason."""
        from builders.errors import BuilderError
        from builders.planner import plan_source

        try:
            result = plan_source(source, hardware, revision=revision, seq_len=seq_len, usable_fraction=usable_fraction,
                                 workspace_gib=workspace_gib, memory_gib=memory_gib)
        except ValueError as err:  # (an OnrampError goes to the root CLI as it is)
            raise BuilderError(f"bad planner argument: {err}") from None
        typer.echo(result.to_json() if as_json else result.table())

    @app.command("build")
    def build_cmd(
        source: str = typer.Argument(..., help="A local checkpoint dir or a Hub repo id ORG/NAME."),
        backend: str = typer.Option("openvino", "--backend", help="openvino or tensorrt_llm."),
        quant: str = typer.Option("int8", "--quant", help="openvino: int8, int4, fp16; tensorrt_llm: none, int8, "
                                  "int4, int4_awq, fp8."),
        out: Path | None = typer.Option(None, "--out", help="Engines root (default: ONRAMP_ENGINES_DIR)."),
        revision: str | None = typer.Option(None, "--revision", help="Hub revision (branch, tag or sha)."),
        repo: str | None = typer.Option(None, "--repo", help="Repo id a local SOURCE came from (names the engine)."),
        hardware: str | None = typer.Option(None, "--hardware", help="Pick the layout with the planner for this "
                                            "target (a100-40gb, a100-80gb, h100-80gb, cpu)."),
        tp: int | None = typer.Option(None, "--tp", help="With --hardware: this tensor-parallel size "
                                      "(default: the smallest that fits)."),
        runtime_precision: str | None = typer.Option(None, "--runtime-precision",
                                                     help="openvino: the compute precision recorded in the manifest "
                                                     "and used by every loader: f32 (default) or bf16 (faster on "
                                                     "CPUs with BF16, lossier: a layout of its own for the gates); "
                                                     "-dq32 after either quantizes activations to int8 for the "
                                                     "matmuls (f32-dq32: faster on AVX-512 VNNI/AMX CPUs, lossier)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the engine dir, build id, layout and the "
                                     "commands a build runs, and build nothing."),
    ) -> None:
        """Build SOURCE into an engine directory (or find the finished one) and print its path."""
        from builders.build import build_engine, prepare_build

        def progress(msg: str) -> None:
            typer.secho(msg, err=True)

        if dry_run:
            typer.echo(prepare_build(source, backend=backend, quant=quant, out_root=out, repo=repo,
                                     revision=revision, hardware=hardware, tp=tp,
                                     runtime_precision=runtime_precision).describe())
            return
        path = build_engine(source, backend=backend, quant=quant, out_root=out, repo=repo, revision=revision,
                            hardware=hardware, tp=tp, progress=progress, runtime_precision=runtime_precision)
        typer.echo(str(path))
