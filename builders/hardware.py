"""The hardware catalog: what a build target offers (devices, memory, precisions).

Memory is per device in GiB as the driver reports it (an "80GB" A100 has 81920 MiB = 80 GiB;
the 40 GB part 40 GiB; an H100 SXM 80 GB part 81559 MiB, taken as 79.6 GiB). ``devices`` is the
largest tensor-parallel group one node offers (8 GPUs on DGX/HGX A100 and H100 nodes; the CPU
target runs one process, so TP 1 only). The ``cpu`` entry is a 64 GiB server by default; pass
another ``memory_gib`` with :func:`get_hardware` for your machine.

Precisions (what each target's builder can produce):

- A100: ``fp16``, ``bf16``, ``int8`` (weight-only), ``int4_awq`` (AWQ weight-only);
- H100: the same plus ``fp8`` (Hopper's FP8 tensor cores);
- cpu (OpenVINO): ``int8`` and ``int4`` weight compression.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from builders.errors import UnknownHardwareError

# Bytes per weight of each precision, and the dtype/quantization pair a Layout records for it.
PRECISIONS: dict[str, dict] = {
    "fp16": {"weight_bytes": 2.0, "dtype": "fp16", "quantization": "none"},
    "bf16": {"weight_bytes": 2.0, "dtype": "bf16", "quantization": "none"},
    "fp8": {"weight_bytes": 1.0, "dtype": "bf16", "quantization": "fp8"},
    "int8": {"weight_bytes": 1.0, "dtype": "fp16", "quantization": "int8"},
    "int4_awq": {"weight_bytes": 0.5, "dtype": "fp16", "quantization": "int4_awq"},
    "int4": {"weight_bytes": 0.5, "dtype": "fp16", "quantization": "int4"},
}


@dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    kind: str  # "gpu" | "cpu"
    memory_gib: float  # per device
    devices: int  # largest TP group on one node
    precisions: tuple[str, ...]
    backend: str  # the builder that targets it

    def with_memory(self, memory_gib: float) -> Hardware:
        return replace(self, memory_gib=memory_gib)


_A100 = ("fp16", "bf16", "int8", "int4_awq")
CATALOG: dict[str, Hardware] = {
    "a100-40gb": Hardware("a100-40gb", "NVIDIA A100 40GB (SXM/PCIe)", "gpu", 40.0, 8, _A100, "tensorrt_llm"),
    "a100-80gb": Hardware("a100-80gb", "NVIDIA A100 80GB (SXM/PCIe)", "gpu", 80.0, 8, _A100, "tensorrt_llm"),
    "h100-80gb": Hardware("h100-80gb", "NVIDIA H100 80GB (SXM)", "gpu", 79.6, 8, _A100 + ("fp8",), "tensorrt_llm"),
    "cpu": Hardware("cpu", "x86 CPU server (OpenVINO)", "cpu", 64.0, 1, ("int8", "int4"), "openvino"),
}


def get_hardware(name: str, memory_gib: float | None = None) -> Hardware:
    try:
        hw = CATALOG[name.lower()]
    except KeyError:
        raise UnknownHardwareError(f"unknown hardware {name!r}",
                                   f"pass --hardware one of {', '.join(CATALOG)}") from None
    return hw.with_memory(memory_gib) if memory_gib else hw
