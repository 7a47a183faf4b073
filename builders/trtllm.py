"""The TensorRT-LLM backend: checkpoint conversion + ``trtllm-build`` per layout.

Every command line here follows TensorRT-LLM's own documentation; nothing is invented:

- Conversion of a Hugging Face checkpoint, per architecture, with the example scripts
  (``examples/models/core/llama/convert_checkpoint.py`` for Llama and Mistral — "Mistral v0.1
  is compatible with LLaMA interface and can be built and run using the same instructions" —
  and ``examples/models/core/qwen/convert_checkpoint.py`` for Qwen2). Flags ``--model_dir
  --output_dir --dtype --tp_size --pp_size --workers`` and, for weight-only quantization,
  ``--use_weight_only --weight_only_precision int8|int4``:
  https://github.com/NVIDIA/TensorRT-LLM/blob/main/examples/models/core/llama/README.md
  ("Build the LLaMA 7B model using a single GPU and apply INT8 weight-only quantization",
  "Build LLaMA 7B using 2-way tensor parallelism") and that script's ``parse_arguments``.
- AWQ int4 and FP8 go through ModelOpt's ``examples/quantization/quantize.py`` (``--model_dir
  --output_dir --dtype --qformat int4_awq|fp8 --awq_block_size 128 --calib_size --tp_size
  --pp_size --calib_dataset``): the same README, sections "AWQ" and "FP8 Post-Training
  Quantization", and quantize.py's argument parser.
- ``trtllm-build``: https://nvidia.github.io/TensorRT-LLM/commands/trtllm-build.html —
  ``--checkpoint_dir --output_dir --max_batch_size --max_input_len --max_seq_len
  --max_num_tokens --kv_cache_type paged`` (``--paged_kv_cache`` is the deprecated spelling)
  ``--workers``, and the plugin/feature options (``tensorrt_llm/plugin/plugin.py``,
  ``add_plugin_argument``): ``--gemm_plugin auto --gpt_attention_plugin auto`` ("auto: the
  plugin is enabled with the precision of the model dtype", PluginConfig docs),
  ``--remove_input_padding enable --context_fmha enable --use_paged_context_fmha enable``
  (chunked context: README "Long context evaluation").
- Output: one ``rank{N}.engine`` per rank (N < tp × pp) and ``config.json`` in the output dir
  (``tensorrt_llm/runtime`` loads ``rank{rank}.engine``); the builder checks each exists.

Remote code: qwen's ``convert_checkpoint.py`` calls ``AutoConfig.from_pretrained(...,
trust_remote_code=True)``. That only matters for a config with ``auto_map``, and such
checkpoints are refused before any build (:func:`builders.facts.check_architecture`), so no
checkpoint code can run.

Where ``tensorrt_llm`` cannot be imported, or there are fewer NVIDIA GPUs than ranks, or the
example scripts are not found, :meth:`TensorRTLLMBackend.check_available` raises
:class:`BuildUnavailable` ("unavailable: ...") before anything runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from builders.errors import BuildFailed, BuilderError, BuildUnavailable
from builders.facts import ModelFacts
from builders.manifest import Layout

DEFAULT_EXAMPLES_DIR = Path("/app/tensorrt_llm/examples")  # where NVIDIA's TensorRT-LLM containers keep them
EXAMPLES_ENV = "TRTLLM_EXAMPLES_DIR"
CONVERT_SCRIPTS = {
    "LlamaForCausalLM": "models/core/llama/convert_checkpoint.py",
    "MistralForCausalLM": "models/core/llama/convert_checkpoint.py",
    "Qwen2ForCausalLM": "models/core/qwen/convert_checkpoint.py",
}
QUANTIZE_SCRIPT = "quantization/quantize.py"
QUANTIZATIONS = ("none", "int8", "int4", "int4_awq", "fp8")
_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
# Copied next to the engines so that tensorrt_llm's LLM API (and our server) find the tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class TRTLLMCommands:
    """What a TensorRT-LLM build of one layout runs, in order, and the files it must produce."""

    convert: list[str]
    build: list[str]
    checkpoint_dir: str
    engine_dir: str
    engine_files: list[str]

    def script(self) -> str:
        """The two commands as a bash script (what an operator would run by hand)."""
        lines = ["#!/usr/bin/env bash", "set -euo pipefail"]
        for cmd in (self.convert, self.build):
            lines.append(" \\\n    ".join(_flag_groups(cmd)))
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return asdict(self)


def _flag_groups(cmd: list[str]) -> list[str]:
    """``[prog, script, --a, 1, --b, --c, 2]`` → ``["prog script", "--a 1", "--b", "--c 2"]`` (quoted)."""
    groups: list[list[str]] = [[]]
    for part in cmd:
        if part.startswith("--") and groups[-1]:
            groups.append([])
        groups[-1].append(shlex.quote(part))
    return [" ".join(g) for g in groups]


def examples_dir(explicit: Path | None = None) -> Path:
    return Path(explicit or os.environ.get(EXAMPLES_ENV) or DEFAULT_EXAMPLES_DIR)


def trtllm_commands(checkpoint: Path, facts: ModelFacts, layout: Layout, *, checkpoint_dir: Path,
                    engine_dir: Path, examples: Path, python: str = "python3", max_num_tokens: int = 8192,
                    calib_dataset: str | None = None) -> TRTLLMCommands:
    """The conversion and ``trtllm-build`` command lines for ``layout`` (see the module docstring)."""
    if facts.architecture not in CONVERT_SCRIPTS:
        raise BuilderError(f"no TensorRT-LLM conversion for {facts.architecture}",
                           f"supported: {', '.join(CONVERT_SCRIPTS)}")
    quant = layout.quantization
    if quant == "fp16":
        quant = "none"
    if quant not in QUANTIZATIONS:
        raise BuilderError(f"the tensorrt_llm backend has no quantization {layout.quantization!r}",
                           f"use one of {', '.join(QUANTIZATIONS)}")
    if facts.heads % layout.tp:
        raise BuilderError(f"tp={layout.tp} does not divide the {facts.heads} attention heads",
                           "pick a layout from `onramp plan`")
    dtype = _DTYPES[layout.dtype]
    ranks = layout.tp * layout.pp
    parallel = ["--tp_size", str(layout.tp), "--pp_size", str(layout.pp)]
    if quant in ("int4_awq", "fp8"):
        convert = [python, str(examples / QUANTIZE_SCRIPT), "--model_dir", str(checkpoint),
                   "--output_dir", str(checkpoint_dir), "--dtype", dtype]
        if quant == "int4_awq":
            convert += ["--qformat", "int4_awq", "--awq_block_size", "128", "--calib_size", "32"]
        else:
            convert += ["--qformat", "fp8", "--calib_size", "512"]
        if calib_dataset:
            convert += ["--calib_dataset", calib_dataset]
        convert += parallel
    else:
        convert = [python, str(examples / CONVERT_SCRIPTS[facts.architecture]), "--model_dir", str(checkpoint),
                   "--output_dir", str(checkpoint_dir), "--dtype", dtype, *parallel]
        if quant in ("int8", "int4"):
            convert += ["--use_weight_only", "--weight_only_precision", quant]
        convert += ["--workers", str(ranks)]
    build = [
        "trtllm-build",
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(engine_dir),
        "--gemm_plugin", "auto",
        "--gpt_attention_plugin", "auto",
        "--max_batch_size", str(layout.max_batch),
        "--max_input_len", str(layout.max_input_len),
        "--max_seq_len", str(layout.max_seq_len),
        "--max_num_tokens", str(max_num_tokens),
        "--kv_cache_type", "paged",
        "--remove_input_padding", "enable",
        "--context_fmha", "enable",
        "--use_paged_context_fmha", "enable",
        "--workers", str(ranks),
    ]
    files = ["config.json"] + [f"rank{r}.engine" for r in range(ranks)]
    return TRTLLMCommands(convert=convert, build=build, checkpoint_dir=str(checkpoint_dir),
                          engine_dir=str(engine_dir), engine_files=files)


def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def check_engine_files(engine_dir: Path, commands: TRTLLMCommands) -> None:
    missing = [f for f in commands.engine_files if not (Path(engine_dir) / f).is_file()]
    if missing:
        raise BuildFailed(f"trtllm-build finished but {', '.join(missing)} are missing in {engine_dir}",
                          "see the build log; every rank must have its engine file")


class TensorRTLLMBackend:
    """The TensorRT-LLM plugin (see :mod:`builders.backends`): builds with TensorRT-LLM's examples and
    ``trtllm-build``, serves with :class:`serving.engines.trtllm.TRTLLMEngine`, evaluates with
    lm-eval's ``trtllm`` model."""

    name = "tensorrt_llm"
    engine = "serving.engines.trtllm:TRTLLMEngine"
    embedding_bytes = 2.0  # weight-only int8, AWQ int4 and FP8 keep the embedding table 16-bit
    max_tp = None  # as many GPUs as the node has

    def layout_dtype(self, precision: str, facts: ModelFacts) -> str:
        """A 16-bit precision is its own dtype; FP8 computes in the checkpoint's 16-bit dtype;
        weight-only int8 and AWQ int4 in fp16."""
        from builders.hardware import PRECISIONS

        if precision in ("fp16", "bf16"):
            return precision
        return facts.dtype16 if precision == "fp8" else PRECISIONS[precision]["dtype"]

    def engine_problem(self, engine_dir: Path) -> str | None:
        engine_dir = Path(engine_dir)
        if not (engine_dir / "config.json").is_file():
            return "has no config.json: it is not a TensorRT-LLM engine directory"
        if not any(engine_dir.glob("rank*.engine")):
            return "has no rank0.engine: it is not a TensorRT-LLM engine directory"
        return None

    def lm_eval_model(self, engine_dir: Path, workdir: Path) -> tuple[str, dict]:
        """lm-eval's ``trtllm`` model over the engine directory, with its manifest's parallelism."""
        from builders.manifest import read_manifest

        layout = read_manifest(engine_dir).layout
        return "trtllm", {"model": str(engine_dir), "tokenizer": str(engine_dir),
                          "tensor_parallel_size": layout.tp, "pipeline_parallel_size": layout.pp}

    def __init__(self, examples: Path | None = None, python: str = "python3", max_num_tokens: int = 8192,
                 calib_dataset: str | None = None, hardware: str = "a100-80gb"):
        self.examples = examples_dir(examples)
        self.python, self.max_num_tokens, self.calib_dataset = python, max_num_tokens, calib_dataset
        self.hardware = hardware

    def version(self) -> str:
        try:
            return metadata.version("tensorrt-llm")
        except metadata.PackageNotFoundError:
            return "not installed"

    def toolchain(self) -> dict[str, str]:
        return {"tensorrt-llm": self.version()}

    def default_layout(self, facts: ModelFacts, quant: str) -> Layout:
        """The smallest-TP feasible layout of ``quant`` on this backend's hardware (a100-80gb by default)."""
        from builders.planner import plan

        precision = facts.dtype16 if quant == "none" else quant
        result = plan(facts, self.hardware)
        options = [o for o in result.feasible() if o.precision == precision]
        if not options:
            reasons = "; ".join(f"TP{o.tp}: {o.reason}" for o in result.options if o.precision == precision)
            raise BuilderError(f"no feasible {precision} layout on {self.hardware}: {reasons or 'not offered'}",
                               "run `onramp plan SOURCE --hardware NAME` and pick another precision or hardware")
        return options[0].to_layout()

    def commands(self, checkpoint: Path, out_dir: Path, layout: Layout, facts: ModelFacts) -> TRTLLMCommands:
        out_dir = Path(out_dir)
        return trtllm_commands(checkpoint, facts, layout, checkpoint_dir=out_dir / ".tllm_checkpoint",
                               engine_dir=out_dir, examples=self.examples, python=self.python,
                               max_num_tokens=self.max_num_tokens, calib_dataset=self.calib_dataset)

    def commands_text(self, checkpoint: Path, out_dir: Path, layout: Layout, facts: ModelFacts) -> str:
        return self.commands(checkpoint, out_dir, layout, facts).script()

    def check_available(self, ranks: int = 1) -> None:
        if importlib.util.find_spec("tensorrt_llm") is None:
            raise BuildUnavailable("unavailable: tensorrt_llm is not installed here",
                                   "run this build on a GPU worker with TensorRT-LLM (e.g. NVIDIA's "
                                   "tensorrt-llm container), or use --backend openvino on CPUs")
        if shutil.which("trtllm-build") is None:
            raise BuildUnavailable("unavailable: trtllm-build is not on PATH",
                                   "install tensorrt-llm in this environment")
        gpus = _gpu_count()
        if gpus < ranks:
            raise BuildUnavailable(f"unavailable: {ranks} NVIDIA GPU(s) needed, {gpus} found (nvidia-smi -L)",
                                   "run on a node with enough GPUs or pick a smaller TP from `onramp plan`")
        if not self.examples.is_dir():
            raise BuildUnavailable(f"unavailable: TensorRT-LLM's examples are not at {self.examples}",
                                   f"set {EXAMPLES_ENV} to the examples/ directory of your TensorRT-LLM checkout")

    def logits_model(self, engine_dir: Path):
        """Full next-token logits of a TensorRT-LLM engine: not wired up yet (it would run the engine with
        ``gather_generation_logits``/``return_context_logits``); says so instead of guessing."""
        raise BuildUnavailable(
            f"unavailable: full next-token logits (KL divergence, top-1 agreement) are not implemented for "
            f"TensorRT-LLM engines ({engine_dir})",
            "evaluate this build with the quality section's other metrics, or build the same checkpoint "
            "with --backend openvino to measure its KL divergence")

    def build(self, checkpoint: Path, out_dir: Path, layout: Layout, facts: ModelFacts, log_path: Path) -> None:
        self.check_available(layout.tp * layout.pp)
        cmds = self.commands(checkpoint, out_dir, layout, facts)
        (Path(out_dir) / "onramp_trtllm_commands.json").write_text(json.dumps(cmds.to_dict(), indent=2) + "\n")
        try:
            for cmd in (cmds.convert, cmds.build):
                with open(log_path, "ab") as log:
                    log.write(("$ " + shlex.join(cmd) + "\n").encode())
                    log.flush()
                    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    raise BuildFailed(f"{Path(cmd[1] if cmd[0] != 'trtllm-build' else cmd[0]).name} failed "
                                      f"(code {proc.returncode})", f"see {log_path}")
            check_engine_files(out_dir, cmds)
        finally:
            shutil.rmtree(cmds.checkpoint_dir, ignore_errors=True)
        for name in TOKENIZER_FILES:
            if (Path(checkpoint) / name).is_file():
                shutil.copyfile(Path(checkpoint) / name, Path(out_dir) / name)
