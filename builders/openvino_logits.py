"""Full next-token logits of an OpenVINO engine, for the KL-divergence quality measure.

The engine's own IR (``openvino_model.xml``, stateful, as optimum-intel exports it) compiled
with ``openvino.Core().compile_model`` and the properties recorded in the engine's manifest
(:func:`builders.ov_runtime.load_properties`: inference precision, KV-cache precision, ...),
never the device defaults. One prefill per sequence gives the logits at every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builders.errors import BuildUnavailable

# What the compiled model reports back about its numerics: recorded with every measurement.
_REPORTED = ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE",
             "EXECUTION_MODE_HINT")


def _text(value: Any) -> str:
    """``f32`` for an ``ov.Type``, ``PERFORMANCE`` for an enum, else ``str``."""
    if hasattr(value, "get_type_name"):
        return value.get_type_name()
    return getattr(value, "name", None) or str(value)


class OpenVINOLogits:
    """``next_token_logits(ids)`` -> float32 array ``[len(ids), vocab]`` from one compiled IR."""

    def __init__(self, engine_dir: Path, device: str = "CPU"):
        import openvino as ov

        from builders.ov_runtime import load_properties

        self.engine_dir = Path(engine_dir)
        self.properties: dict[str, Any] = dict(load_properties(self.engine_dir))
        xml = self.engine_dir / "openvino_model.xml"
        if not xml.is_file():
            raise BuildUnavailable(f"{self.engine_dir} has no openvino_model.xml",
                                   "pass an engine directory built by `onramp build --backend openvino`")
        try:
            self._compiled = ov.Core().compile_model(str(xml), device, self.properties)
        except Exception as exc:  # openvino raises RuntimeError with a long log
            raise BuildUnavailable(f"OpenVINO cannot compile {xml}: {str(exc).splitlines()[0][:300]}",
                                   "rebuild the engine (onramp build ...)") from exc
        self._inputs = {p.get_any_name() for p in self._compiled.inputs}
        self._request = self._compiled.create_infer_request()
        self.runtime: dict[str, str] = {"device": device}
        for name in _REPORTED:
            try:
                self.runtime[name] = _text(self._compiled.get_property(name))
            except Exception:  # a property this device or version does not report
                continue

    def next_token_logits(self, ids: Sequence[int]):
        import numpy as np

        n = len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = np.ones((1, n), dtype=np.int64)
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.arange(n, dtype=np.int64)[None]
        if "beam_idx" in self._inputs:
            feed["beam_idx"] = np.zeros((1,), dtype=np.int32)
        self._request.reset_state()  # stateful IR: each sequence starts from an empty KV cache
        self._request.infer(feed)
        logits = np.array(self._request.get_tensor("logits").data[0], dtype=np.float32)
        if logits.shape[0] != n:
            raise BuildUnavailable(f"{self.engine_dir}: the IR returns logits for {logits.shape[0]} of {n} positions",
                                   "re-export the engine without last-token slicing (optimum-cli export openvino)")
        return logits
