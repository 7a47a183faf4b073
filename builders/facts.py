"""A checkpoint's facts, from its config.json and its safetensors headers (or index).

What the planner and the builders need to know about a model: parameters, layers, attention
heads, KV heads, head dim, hidden size, vocab, max positions, tied embeddings, dtype.

Parameters: the safetensors headers are authoritative (the sum of every tensor's element
count); without the shards, the index's ``metadata.total_size`` divided by the bytes per element
of the checkpoint's dtype; without either, the count computed from config.json for the
Llama-family decoder (embeddings, attention with grouped KV, gated MLP, RMS norms, LM head
unless tied).

Security: only safetensors weights are accepted (pickled ``.bin``/``.pt`` files are refused
with a clear message), remote code is never used (a config with ``auto_map`` is refused), and
only the architectures in :data:`SUPPORTED_ARCHITECTURES` are planned or built.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from onramp.files import read_mapping
from builders.errors import CheckpointError, UnsafeCheckpointError, UnsupportedArchitectureError

# Architectures whose config keys and decoder shape the planner's arithmetic knows, that
# optimum-intel exports to OpenVINO and that TensorRT-LLM's examples convert.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
_CONFIG_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float": "fp32", "half": "fp16"}
_ST_DTYPES = {"F64": ("fp64", 8), "F32": ("fp32", 4), "F16": ("fp16", 2), "BF16": ("bf16", 2),
              "F8_E4M3": ("fp8", 1), "F8_E5M2": ("fp8", 1), "I64": ("int64", 8), "I32": ("int32", 4),
              "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1)}


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    model_type: str
    params: int
    params_source: str  # "safetensors" | "index" | "config"
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    tied_embeddings: bool
    dtype: str  # fp32 | fp16 | bf16

    @property
    def dtype16(self) -> str:
        """The checkpoint's 16-bit dtype (fp16 for an fp32 checkpoint): what a build computes in."""
        return self.dtype if self.dtype in ("fp16", "bf16") else "fp16"

    def to_dict(self) -> dict:
        return asdict(self)


def read_config(checkpoint: Path) -> dict:
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no config.json",
                              "pass a Hugging Face checkpoint directory (or a Hub repo id)")
    return read_mapping(path, CheckpointError, "fix or re-download config.json")


def check_architecture(config: dict, where: str = "config.json") -> str:
    archs = config.get("architectures") or []
    if "auto_map" in config:
        raise UnsafeCheckpointError(
            f"{where} asks for remote code (auto_map); onramp never runs code from a checkpoint",
            f"publish the model with a transformers-native architecture ({', '.join(SUPPORTED_ARCHITECTURES)})",
        )
    if len(archs) != 1 or archs[0] not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {archs or 'none'} in {where}",
            f"onramp supports {', '.join(SUPPORTED_ARCHITECTURES)}",
        )
    return archs[0]


def check_safetensors(checkpoint: Path) -> list[Path]:
    """Return the safetensors weight files of ``checkpoint``; refuse pickled-only checkpoints."""
    checkpoint = Path(checkpoint)
    files = sorted(checkpoint.glob("*.safetensors"))
    if files or (checkpoint / "model.safetensors.index.json").is_file():
        return files
    pickled = sorted(p.name for p in checkpoint.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise UnsafeCheckpointError(
            f"{checkpoint} has only pickled weights ({', '.join(pickled[:3])}); onramp loads safetensors only "
            "(unpickling can run arbitrary code)",
            "convert the weights to safetensors (transformers: model.save_pretrained(dir, safe_serialization=True)) "
            "and pass that directory",
        )
    raise CheckpointError(f"{checkpoint} has no *.safetensors weights", "pass a checkpoint with safetensors weights")


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets); reads no weights."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path} is not a safetensors file (too short)", "re-download it")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise CheckpointError(f"{path} has an implausible header size ({n} bytes)", "re-download it")
        try:
            header = json.loads(fh.read(n))
        except json.JSONDecodeError:
            raise CheckpointError(f"{path} has a malformed safetensors header", "re-download it") from None
    header.pop("__metadata__", None)
    return header


def count_safetensors(files: list[Path]) -> tuple[int, str | None]:
    """(parameter count, dtype of the floating-point tensors) from the headers of ``files``."""
    total, counts = 0, {}
    for path in files:
        for info in read_safetensors_header(path).values():
            n = 1
            for dim in info["shape"]:
                n *= dim
            total += n
            name = _ST_DTYPES.get(info["dtype"], (info["dtype"].lower(), 0))[0]
            counts[name] = counts.get(name, 0) + n
    floats = {k: v for k, v in counts.items() if k in ("fp32", "fp16", "bf16")}
    return total, (max(floats, key=floats.get) if floats else None)


def params_from_config(c: dict) -> int:
    """Parameters of a Llama-family decoder from its config (see the module docstring)."""
    h, inter, v, n = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or h // heads
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h  # q, k, v, o
    if c.get("attention_bias") or c.get("model_type") == "qwen2":
        attn += heads * hd + 2 * kv * hd  # q/k/v biases (Qwen2 always has them)
    mlp = 3 * h * inter  # gate, up, down
    norms = 2 * h
    embed = v * h
    lm_head = 0 if c.get("tie_word_embeddings", False) else v * h
    return embed + n * (attn + mlp + norms) + h + lm_head


def _config_dtype(c: dict) -> str:
    raw = c.get("torch_dtype") or c.get("dtype") or "float32"
    return _CONFIG_DTYPES.get(str(raw).removeprefix("torch."), "fp32")


def facts_from_config(config: dict, checkpoint: Path | None = None, *, where: str = "config.json") -> ModelFacts:
    arch = check_architecture(config, where)
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        facts = dict(
            architecture=arch,
            model_type=str(config.get("model_type", "")),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            max_positions=int(config["max_position_embeddings"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
        params, source, dtype = params_from_config(config), "config", _config_dtype(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} lacks or mangles a required field: {exc}",
                              "pass the model's original config.json") from None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        shards = sorted(checkpoint.glob("*.safetensors"))
        index = checkpoint / "model.safetensors.index.json"
        if shards:
            params, st_dtype = count_safetensors(shards)
            source, dtype = "safetensors", st_dtype or dtype
        elif index.is_file():
            try:
                total_size = int(json.loads(index.read_text())["metadata"]["total_size"])
            except (OSError, ValueError, KeyError, TypeError):
                total_size = 0
            if total_size:
                params, source = total_size // DTYPE_BYTES[dtype], "index"
    return ModelFacts(params=params, params_source=source, dtype=dtype, **facts)


def inspect_checkpoint(checkpoint: Path) -> ModelFacts:
    """Read a local checkpoint's facts after the security checks (config, architecture, safetensors)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint directory {checkpoint} does not exist",
                              "pass a local checkpoint directory or a Hub repo id (ORG/NAME)")
    config = read_config(checkpoint)
    check_architecture(config, str(checkpoint / "config.json"))
    check_safetensors(checkpoint)
    return facts_from_config(config, checkpoint, where=str(checkpoint / "config.json"))
