"""The OpenVINO backend: optimum-intel's export to OpenVINO IR with weight compression.

One ``optimum-cli export openvino`` run (in a subprocess: torch and nncf stay out of the
caller's memory) writes the stateful IR (``openvino_model.xml/.bin``), the tokenizer and
detokenizer IR (openvino-tokenizers), ``config.json``, ``generation_config.json``, the HF
tokenizer files and ``chat_template.jinja``: everything ``openvino_genai.LLMPipeline`` /
``ContinuousBatchingPipeline`` and lm-eval's ``openvino`` model load as is.

Quantization: ``int8`` (8-bit weights, per channel), ``int4`` (4-bit weights, groups of
128/64/32/16 channels — the largest group that divides every input channel: nncf refuses a
group size that does not, e.g. 128 for SmolLM2-135M's hidden size 576), ``fp16`` (no
compression). Remote code is never trusted (no ``--trust-remote-code``), and the export runs
with ``HF_HUB_OFFLINE=1``: it reads the local checkpoint only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from builders.errors import BuildFailed, BuilderError, BuildUnavailable
from builders.facts import ModelFacts
from builders.manifest import Layout

QUANTIZATIONS = ("int8", "int4", "fp16")
REQUIRED_FILES = (
    "openvino_model.xml", "openvino_model.bin",
    "openvino_tokenizer.xml", "openvino_tokenizer.bin",
    "openvino_detokenizer.xml", "openvino_detokenizer.bin",
    "config.json", "generation_config.json", "chat_template.jinja",
)
_PACKAGES = ("openvino", "openvino-tokenizers", "openvino-genai", "optimum-intel", "nncf", "transformers")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def int4_group_size(facts: ModelFacts) -> int:
    """The largest of 128/64/32/16 that divides every linear layer's input channels."""
    channels = (facts.hidden_size, facts.intermediate_size, facts.heads * facts.head_dim)
    for group in (128, 64, 32, 16):
        if all(c % group == 0 for c in channels):
            return group
    raise BuilderError(f"no int4 group size divides the model's channel sizes {channels}",
                       "build with --quant int8 instead")


def export_command(checkpoint: Path, out_dir: Path, quant: str, facts: ModelFacts) -> list[str]:
    """The ``optimum-cli export openvino`` command line (run with this interpreter)."""
    if quant not in QUANTIZATIONS:
        raise BuilderError(f"the openvino backend has no quantization {quant!r}",
                           f"pass --quant one of {', '.join(QUANTIZATIONS)}")
    cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino",
           "--model", str(checkpoint), "--task", "text-generation-with-past", "--weight-format", quant]
    if quant == "int4":
        cmd += ["--group-size", str(int4_group_size(facts))]
    return cmd + [str(out_dir)]


def _ensure_chat_template(checkpoint: Path, out_dir: Path) -> None:
    target = out_dir / "chat_template.jinja"
    if target.is_file():
        return
    if (checkpoint / "chat_template.jinja").is_file():
        shutil.copyfile(checkpoint / "chat_template.jinja", target)
        return
    import json

    try:
        template = json.loads((checkpoint / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        template = None
    if isinstance(template, str) and template:
        target.write_text(template)


class OpenVINOBackend:
    """The OpenVINO plugin (see :mod:`builders.backends`): builds with optimum-intel, serves with
    :class:`serving.engines.openvino.OpenVINOEngine`, evaluates with lm-eval's ``openvino`` model."""

    name = "openvino"
    engine = "serving.engines.openvino:OpenVINOEngine"
    embedding_bytes = 1.0  # nncf compresses the embedding table (and an untied LM head) to int8 too
    max_tp = 1  # one process on one device
    tunable = True  # evals.tune measures its runtime knobs (threads, scheduler) and rewrites manifest.runtime

    def layout_dtype(self, precision: str, facts: ModelFacts) -> str:
        """A 16-bit precision is its own dtype; compressed weights compute in the checkpoint's 16-bit dtype."""
        return precision if precision in ("fp16", "bf16") else facts.dtype16

    def engine_problem(self, engine_dir: Path) -> str | None:
        for name in ("openvino_model.xml", "openvino_model.bin", "config.json"):
            if not (Path(engine_dir) / name).is_file():
                return f"has no {name}: it is not an OpenVINO engine directory"
        return None

    def lm_eval_model(self, engine_dir: Path, workdir: Path) -> tuple[str, dict]:
        """lm-eval's ``openvino`` model, with the engine's recorded runtime properties (lm-eval
        reads them from a file), never the device's defaults."""
        import json

        from builders.ov_runtime import load_properties

        ov_config = Path(workdir) / "ov_config.json"
        ov_config.write_text(json.dumps(load_properties(engine_dir)))
        return "openvino", {"pretrained": str(engine_dir), "ov_config": str(ov_config)}

    def version(self) -> str:
        return _version("openvino") or "not installed"

    def toolchain(self) -> dict[str, str]:
        return {pkg: v for pkg in _PACKAGES if (v := _version(pkg))}

    def default_layout(self, facts: ModelFacts, quant: str) -> Layout:
        if quant not in QUANTIZATIONS:
            raise BuilderError(f"the openvino backend has no quantization {quant!r}",
                               f"pass --quant one of {', '.join(QUANTIZATIONS)}")
        max_seq = min(facts.max_positions, 4096)
        return Layout(hardware="cpu", tp=1, pp=1, dtype=facts.dtype, quantization=quant,
                      max_batch=32, max_input_len=max_seq // 2, max_seq_len=max_seq)

    def default_runtime(self, layout: Layout, precision: str | None = None) -> dict:
        """Explicit OpenVINO properties and scheduler settings (never the device's defaults)."""
        from builders.ov_runtime import default_runtime

        try:
            return default_runtime(precision or "f32")
        except ValueError as exc:
            raise BuilderError(str(exc), "pass --runtime-precision f32 (default), bf16, or either with -dq32 "
                               "(int8 activations: f32-dq32)") from None

    def commands_text(self, checkpoint: Path, out_dir: Path, layout: Layout, facts: ModelFacts) -> str:
        import shlex

        return shlex.join(export_command(Path(checkpoint), Path(out_dir), layout.quantization, facts)) + "\n"

    def check_available(self) -> None:
        missing = [p for p in ("openvino", "optimum-intel", "openvino-tokenizers", "nncf") if _version(p) is None]
        if missing:
            raise BuildUnavailable(f"unavailable: the openvino backend needs {', '.join(missing)}",
                                   "pip install 'optimum-intel[openvino]' openvino-tokenizers (see constraints.txt)")

    def logits_model(self, engine_dir: Path):
        """The engine's full next-token logits (``.next_token_logits(ids)``), through its own runtime
        with its manifest's properties; ``.runtime`` says what the compiled model reports."""
        from builders.openvino_logits import OpenVINOLogits

        return OpenVINOLogits(Path(engine_dir))

    def build(self, checkpoint: Path, out_dir: Path, layout: Layout, facts: ModelFacts, log_path: Path,
              timeout: float = 3600) -> None:
        if layout.tp != 1 or layout.pp != 1:
            raise BuilderError(f"the openvino backend builds tp=1, pp=1 only (asked tp={layout.tp}, pp={layout.pp})",
                               "use --backend tensorrt_llm for tensor/pipeline parallel layouts")
        cmd = export_command(Path(checkpoint).resolve(), Path(out_dir).resolve(), layout.quantization, facts)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with open(log_path, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BuildFailed(f"optimum-cli export did not finish within {timeout:.0f} s",
                                  f"see {log_path}") from None
        if proc.returncode != 0:
            raise BuildFailed(f"optimum-cli export openvino failed (code {proc.returncode}): {_last_error(log_path)}",
                              f"see the full log at {log_path}")
        _ensure_chat_template(Path(checkpoint), Path(out_dir))
        missing = [f for f in REQUIRED_FILES if not (Path(out_dir) / f).is_file()]
        if missing:
            raise BuildFailed(f"the export finished but did not write {', '.join(missing)}",
                              f"see {log_path}; the checkpoint needs a tokenizer and a chat template")


def _last_error(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in Path(log_path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"
