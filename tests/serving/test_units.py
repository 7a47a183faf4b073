"""Pure pieces: the incremental detokenizer (real reference tokenizer), request -> backend
sampling parameters (OpenVINO and TensorRT-LLM), the lazy backend registry, keys."""

from __future__ import annotations

import json
import stat

import pytest

from serving.detok import IncrementalDetokenizer
from serving.engine import SamplingParams
from serving.engines import backend_class, load_engine
from serving.engines.openvino import generation_config_kwargs
from serving.engines.trtllm import llm_kwargs, sampling_kwargs
from serving.errors import BackendUnavailable, EngineLoadError


@pytest.fixture(scope="module")
def tok(reference_model):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(reference_model / "tokenizer.json"))


def stream_text(tok, text, stop=(), step=1):
    ids = tok.encode(text, add_special_tokens=False).ids
    detok = IncrementalDetokenizer(lambda x: tok.decode(list(x), skip_special_tokens=True), stop)
    pieces = [detok.add(ids[i:i + step]) for i in range(0, len(ids), step)]
    pieces.append(detok.flush())
    return pieces, detok


@pytest.mark.parametrize("text", ["The capital of France is Paris.", "naïve café — 東京 🚀 ok", "  two  spaces\n\ttab"])
def test_detok_streams_exactly_the_text(tok, text):
    pieces, _ = stream_text(tok, text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # never half a character


def test_detok_cuts_stop_strings_across_tokens(tok):
    pieces, detok = stream_text(tok, "1, 2, 3, 4, 5, 6", stop=[", 4"])
    assert "".join(pieces) == "1, 2, 3" and detok.stopped
    # a prefix of the stop string is held back, then released when it is not one
    pieces, detok = stream_text(tok, "a, 4x", stop=[", 5"])
    assert "".join(pieces) == "a, 4x" and not detok.stopped


def test_openvino_generation_config_from_request():
    greedy = generation_config_kwargs(SamplingParams(temperature=0, frequency_penalty=1.0), 100, 2)
    assert greedy == {"max_new_tokens": 100, "do_sample": False, "frequency_penalty": 1.0, "eos_token_id": 2}
    sampled = generation_config_kwargs(SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=7, logprobs=True,
                                                      presence_penalty=0.5), 5, 2)
    assert sampled == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                       "rng_seed": 7, "presence_penalty": 0.5, "logprobs": 1, "eos_token_id": 2}


def test_trtllm_sampling_params_from_request():
    kw = sampling_kwargs(SamplingParams(temperature=0.8, top_p=0.95, top_k=50, seed=3, stop=["\n\n"],
                                        frequency_penalty=0.5, logprobs=True), 64, 2)
    assert kw == {"max_tokens": 64, "detokenize": True, "end_id": 2, "temperature": 0.8, "top_p": 0.95, "top_k": 50,
                  "seed": 3, "frequency_penalty": 0.5, "stop": ["\n\n"], "include_stop_str_in_output": False,
                  "logprobs": 1}
    assert sampling_kwargs(SamplingParams(temperature=0), 8, None) == {"max_tokens": 8, "detokenize": True, "top_k": 1}


def _trt_engine_dir(tmp_path, tp=4):
    d = tmp_path / "trt-engine"
    d.mkdir()
    manifest = {"schema": 1, "name": "llama-2-13b", "source": {"repo": "x/y", "revision": None, "path": None},
                "backend": "tensorrt_llm", "backend_version": "1.2.0", "builder_version": "0.1.0",
                "layout": {"hardware": "A100-80GB", "tp": tp, "pp": 1, "dtype": "fp16", "quantization": "none",
                           "max_batch": 64, "max_input_len": 2048, "max_seq_len": 4096},
                "build_id": "b" * 64, "files": {}, "build_seconds": 1.0, "host": "h", "created": "2026-11-21T20:00:00Z"}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_trtllm_llm_args_take_tp_from_manifest(tmp_path):
    from serving.engines import read_engine_manifest

    d = _trt_engine_dir(tmp_path, tp=4)
    kw = llm_kwargs(d, read_engine_manifest(d))
    assert kw == {"model": str(d), "tokenizer": str(d), "tensor_parallel_size": 4, "pipeline_parallel_size": 1,
                  "trust_remote_code": False, "guided_decoding_backend": "xgrammar"}


def test_trtllm_unavailable_says_so(tmp_path):
    # tensorrt_llm is not installable here: loading such an engine must say so clearly
    try:
        import tensorrt_llm  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("tensorrt_llm is installed here")
    with pytest.raises(BackendUnavailable, match="TensorRT-LLM backend is unavailable.*GPU"):
        load_engine(_trt_engine_dir(tmp_path))


def test_backend_registry_is_helpful(tmp_path):
    with pytest.raises(EngineLoadError, match="did you mean 'openvino'"):
        backend_class("openvin")
    with pytest.raises(EngineLoadError, match="no manifest.json"):
        load_engine(tmp_path)
    with pytest.raises(EngineLoadError, match="does not exist"):
        load_engine(tmp_path / "missing")


def test_importing_serving_imports_no_backend():
    import subprocess
    import sys

    code = ("import sys, serving.app, serving.engines, serving.cli; "
            "print([m for m in ('openvino', 'openvino_genai', 'tensorrt_llm', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_keys_are_stored_hashed(tmp_path):
    from serving.auth import KeyStore, create_key, hash_key, list_keys, revoke_key

    path = tmp_path / "keys.json"
    raw = create_key(path, "ci", admin=True)
    text = path.read_text()
    assert raw not in text and hash_key(raw) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list_keys(path)[0].scopes == ("user", "admin")
    assert KeyStore.load(path, env={}).check(f"Bearer {raw}", "admin").name == "ci"
    revoke_key(path, "ci")
    assert list_keys(path) == []
