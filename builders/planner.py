"""The planner: which layouts of a model fit a hardware target, and how many sequences they serve.

For every tensor-parallel size TP in {1, 2, 4, 8} and every precision the hardware offers, a
row says feasible or not, and why. The arithmetic, per device, with its assumptions as
parameters of :func:`plan`:

- ``usable = memory × usable_fraction`` (default 0.90: the rest is for the CUDA context,
  allocator fragmentation and what the runtime keeps for itself — vLLM's
  ``gpu_memory_utilization`` default, too);
- ``weights = (linear params × bytes of the precision + embedding params × embedding bytes) / TP``;
  the hardware's backend says what its quantized builds keep the embedding table and an untied
  LM head in (``embedding_bytes``: 16-bit for TensorRT-LLM's weight-only int8, AWQ int4 and FP8;
  int8 for OpenVINO/nncf). Weights are assumed to split evenly across the TP ranks;
- ``workspace`` (default 2 GiB): activations and the runtime's scratch buffers for up to
  ``max_num_tokens`` tokens in flight, one figure per device;
- ``KV free = usable − weights − workspace``; a token's KV cache on one device is
  ``2 (K, V) × layers × KV heads per device × head dim × kv_bytes`` (``kv_bytes`` 2: fp16 KV),
  with the KV heads split across TP (replicated, one per rank, when TP exceeds them);
- ``KV tokens = KV free / that``; ``max batch = KV tokens // seq_len`` (sequences of ``seq_len``
  tokens, prompt + output, that fit at once).

Rejected rows carry their reason: TP larger than the node, TP not dividing the attention (or
KV) heads, weights + workspace over the usable memory, less KV cache than one sequence.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from builders.backends import get_backend
from builders.facts import ModelFacts
from builders.hardware import PRECISIONS, Hardware, get_hardware
from builders.manifest import Layout

GIB = 1 << 30
TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Assumptions:
    usable_fraction: float = 0.90
    workspace_gib: float = 2.0
    kv_bytes: int = 2
    seq_len: int = 4096  # default: 4096 or the model's max positions when smaller
    max_batch_cap: int = 256  # the most a built layout asks for (TensorRT-LLM --max_batch_size)


@dataclass
class LayoutOption:
    hardware: str
    tp: int
    precision: str
    dtype: str
    quantization: str
    feasible: bool
    reason: str  # why not, or a one-line summary when feasible
    weights_gib: float  # per device
    workspace_gib: float
    usable_gib: float
    kv_gib: float  # per device, left for KV cache (0 when infeasible)
    kv_tokens: int
    max_batch: int
    seq_len: int

    def to_layout(self, max_input_len: int | None = None, max_batch_cap: int = 256) -> Layout:
        """The :class:`Layout` a build of this option records (feasible options only)."""
        if not self.feasible:
            raise ValueError(f"TP{self.tp} {self.precision} on {self.hardware} is not feasible: {self.reason}")
        return Layout(hardware=self.hardware, tp=self.tp, pp=1, dtype=self.dtype, quantization=self.quantization,
                      max_batch=max(1, min(self.max_batch, max_batch_cap)),
                      max_input_len=max_input_len or self.seq_len // 2, max_seq_len=self.seq_len)


@dataclass
class Plan:
    facts: ModelFacts
    hardware: Hardware
    assumptions: Assumptions
    options: list[LayoutOption] = field(default_factory=list)

    def feasible(self) -> list[LayoutOption]:
        return [o for o in self.options if o.feasible]

    def candidates(self, precisions: list[str] | tuple[str, ...] | None = None) -> list[LayoutOption]:
        """The layouts worth building, one per precision (of ``precisions``, default every one the
        hardware offers): its smallest feasible TP. Fewest weight bytes per device first: decode
        reads every weight once per step, so a smaller build is preferred when its quality passes
        the gates (on the cpu target int4 before int8; the flow builds and evaluates both when
        asked for ``--precision int8,int4`` and promotes the first that passes)."""
        wanted = list(precisions) if precisions else list(self.hardware.precisions)
        best: dict[str, LayoutOption] = {}
        for o in self.options:
            if o.feasible and o.precision in wanted and o.precision not in best:
                best[o.precision] = o
        return sorted(best.values(), key=lambda o: (o.weights_gib, wanted.index(o.precision)))

    def option(self, tp: int, precision: str) -> LayoutOption:
        for o in self.options:
            if o.tp == tp and o.precision == precision:
                return o
        raise KeyError(f"no option TP{tp} {precision} for {self.hardware.name}")

    def to_dict(self) -> dict:
        return {"model": self.facts.to_dict(), "hardware": asdict(self.hardware),
                "assumptions": asdict(self.assumptions), "options": [asdict(o) for o in self.options]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        f, hw, a = self.facts, self.hardware, self.assumptions
        lines = [
            f"model: {f.architecture}, {_count(f.params)} params ({f.params_source}), {f.layers} layers, "
            f"{f.heads} heads / {f.kv_heads} KV heads x {f.head_dim}, hidden {f.hidden_size}, vocab {f.vocab_size}, "
            f"max positions {f.max_positions}, tied embeddings {'yes' if f.tied_embeddings else 'no'}, {f.dtype}",
            f"hardware: {hw.name} ({hw.description}), {hw.memory_gib:g} GiB per device x up to {hw.devices}; "
            f"usable {a.usable_fraction:.0%}, workspace {a.workspace_gib:g} GiB/device, fp16 KV, seq len {a.seq_len}",
            "",
            f"{'TP':>3} {'precision':<9} {'weights/dev':>11} {'KV/dev':>9} {'KV tokens':>10} {'max batch':>9}  verdict",
        ]
        for o in self.options:
            kv = f"{o.kv_gib:.1f} GiB" if o.feasible else "-"
            tokens = f"{o.kv_tokens:,}" if o.feasible else "-"
            batch = str(o.max_batch) if o.feasible else "-"
            verdict = "ok" if o.feasible else f"no: {o.reason}"
            lines.append(f"{o.tp:>3} {o.precision:<9} {o.weights_gib:>7.1f} GiB {kv:>9} {tokens:>10} {batch:>9}"
                         f"  {verdict}")
        return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def embedding_params(facts: ModelFacts) -> int:
    return facts.vocab_size * facts.hidden_size * (1 if facts.tied_embeddings else 2)


def weight_bytes(facts: ModelFacts, precision: str, hardware: Hardware) -> float:
    spec = PRECISIONS[precision]
    embed = embedding_params(facts)
    linear = max(facts.params - embed, 0)
    embed_bytes = get_backend(hardware.backend).embedding_bytes
    if spec["quantization"] == "none" or embed_bytes is None:
        embed_bytes = spec["weight_bytes"]
    return linear * spec["weight_bytes"] + embed * embed_bytes


def kv_heads_per_device(facts: ModelFacts, tp: int) -> int:
    return max(1, facts.kv_heads // tp)


def _tp_problem(facts: ModelFacts, hw: Hardware, tp: int) -> str | None:
    if tp > hw.devices:
        max_tp = get_backend(hw.backend).max_tp
        if max_tp is not None and tp > max_tp:
            return f"the {hw.name} target runs one process (TP {max_tp} only)"
        return f"TP{tp} needs {tp} devices; a {hw.name} node has {hw.devices}"
    if facts.heads % tp:
        return f"TP{tp} does not divide the {facts.heads} attention heads"
    if facts.kv_heads % tp and tp % facts.kv_heads:
        return f"TP{tp} and the {facts.kv_heads} KV heads: neither divides the other"
    return None


def plan(facts: ModelFacts, hardware: str | Hardware, *, seq_len: int | None = None, usable_fraction: float = 0.90,
         workspace_gib: float = 2.0, kv_bytes: int = 2, memory_gib: float | None = None) -> Plan:
    """Every (TP, precision) layout of ``facts`` on ``hardware``, feasible or with its reason.

    ``seq_len`` (prompt + output tokens of one sequence) defaults to 4096, or the model's max
    positions when smaller.
    """
    seq_len = seq_len or min(4096, facts.max_positions)
    hw = hardware if isinstance(hardware, Hardware) else get_hardware(hardware, memory_gib)
    if not 0 < usable_fraction <= 1:
        raise ValueError("usable_fraction must be in (0, 1]")
    a = Assumptions(usable_fraction=usable_fraction, workspace_gib=workspace_gib, kv_bytes=kv_bytes, seq_len=seq_len)
    result = Plan(facts=facts, hardware=hw, assumptions=a)
    usable = hw.memory_gib * usable_fraction * GIB
    workspace = workspace_gib * GIB
    for tp in TP_SIZES:
        for precision in hw.precisions:
            spec = PRECISIONS[precision]
            weights = weight_bytes(facts, precision, hw) / tp
            row = dict(hardware=hw.name, tp=tp, precision=precision, dtype=spec["dtype"],
                       quantization=spec["quantization"], weights_gib=round(weights / GIB, 3),
                       workspace_gib=workspace_gib, usable_gib=round(usable / GIB, 3), seq_len=seq_len)
            row["dtype"] = get_backend(hw.backend).layout_dtype(precision, facts)
            problem = _tp_problem(facts, hw, tp)
            if problem is None and seq_len > facts.max_positions:
                problem = f"seq len {seq_len} exceeds the model's {facts.max_positions} max positions"
            free = usable - weights - workspace
            per_token = 2 * facts.layers * kv_heads_per_device(facts, tp) * facts.head_dim * kv_bytes
            tokens = int(free // per_token) if free > 0 else 0
            if problem is None and free <= 0:
                problem = (f"weights {weights / GIB:.1f} GiB/device + workspace {workspace_gib:g} GiB exceed the "
                           f"{usable / GIB:.1f} GiB usable ({usable_fraction:.0%} of {hw.memory_gib:g} GiB)")
            if problem is None and tokens < seq_len:
                problem = f"KV cache left for {tokens:,} tokens/device, less than one {seq_len}-token sequence"
            if problem:
                result.options.append(LayoutOption(feasible=False, reason=problem, kv_gib=0.0, kv_tokens=0,
                                                   max_batch=0, **row))
            else:
                batch = tokens // seq_len
                result.options.append(LayoutOption(
                    feasible=True, reason=f"{tokens:,} KV tokens/device: {batch} sequences of {seq_len}",
                    kv_gib=round(free / GIB, 3), kv_tokens=tokens, max_batch=batch, **row))
    return result


def plan_checkpoint(checkpoint: Path, hardware: str, **kwargs) -> Plan:
    """Plan a local checkpoint (or a directory holding just config.json and an optional index)."""
    from builders.facts import PICKLE_SUFFIXES, check_safetensors, facts_from_config, read_config

    checkpoint = Path(checkpoint)
    if any(p.name.endswith(PICKLE_SUFFIXES + (".safetensors",)) for p in checkpoint.iterdir()):
        check_safetensors(checkpoint)  # weights present: safetensors only (config-only dirs plan too)
    return plan(facts_from_config(read_config(checkpoint), checkpoint, where=str(checkpoint / "config.json")),
                hardware, **kwargs)


def plan_source(source: str | Path, hardware: str, *, revision: str | None = None, settings=None, **kwargs) -> Plan:
    """Plan a local checkpoint dir or a Hub repo id (only config.json and the index are fetched).

    For a Hub repo the file list is checked first: a repository with pickled weights only is
    refused (``onramp.hub.check_weights_are_safetensors``), as :func:`build_engine` would.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return plan_checkpoint(path, hardware, **kwargs)
    import re
    import tempfile

    from builders.errors import CheckpointError
    from builders.facts import facts_from_config, read_config

    text = str(source)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text):
        raise CheckpointError(f"source {text!r} is neither a local checkpoint directory nor a Hub repo id",
                              "pass a directory with config.json, or ORG/NAME on the Hub (HF_ENDPOINT)")
    from huggingface_hub import HfApi, hf_hub_download

    from onramp.hub import _hub_error, check_weights_are_safetensors, resolve_revision
    from onramp.settings import load_settings

    settings = settings or load_settings()
    endpoint = settings.hf_endpoint
    sha = resolve_revision(text, revision or "main", endpoint)
    try:
        files = HfApi(endpoint=endpoint).list_repo_files(text, revision=sha)
    except Exception as exc:  # huggingface_hub raises many types
        raise _hub_error(exc, text, sha, endpoint) from None
    check_weights_are_safetensors(files, text)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("config.json", "model.safetensors.index.json"):
            if name in files:
                try:
                    hf_hub_download(text, name, revision=sha, endpoint=endpoint, local_dir=tmp)
                except Exception as exc:
                    raise _hub_error(exc, text, sha, endpoint) from None
        facts = facts_from_config(read_config(Path(tmp)), Path(tmp), where=f"{text}@{sha[:12]}/config.json")
    return plan(facts, hardware, **kwargs)


def choose_layout(facts: ModelFacts, hardware: str, quant: str, tp: int | None = None, **kwargs) -> Layout:
    """The layout to build for ``quant`` on ``hardware``: the given ``tp``, else the smallest feasible one.

    ``quant`` ``none`` means the checkpoint's 16-bit dtype (fp16 for fp32 checkpoints).
    Raises :class:`~builders.errors.BuilderError` with the planner's reasons when none fits.
    """
    from builders.errors import BuilderError

    precision = facts.dtype16 if quant == "none" else quant
    result = plan(facts, hardware, **kwargs)
    if precision not in result.hardware.precisions:
        raise BuilderError(f"{result.hardware.name} offers no precision {precision!r}",
                           f"pass --quant one of {', '.join(result.hardware.precisions)}")
    rows = [o for o in result.options if o.precision == precision and (tp is None or o.tp == tp)]
    for option in rows:
        if option.feasible:
            return option.to_layout()
    if not rows:
        raise BuilderError(f"tp={tp} is not one of {', '.join(map(str, TP_SIZES))}", "pass --tp 1, 2, 4 or 8")
    reasons = "; ".join(f"TP{o.tp}: {o.reason}" for o in rows)
    raise BuilderError(f"no feasible {precision} layout on {result.hardware.name}: {reasons}",
                       "see `onramp plan SOURCE --hardware NAME` and pick another precision, TP or hardware")
