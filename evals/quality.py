"""Quality of a built engine against its original checkpoint, with lm-eval-harness.

The gating measure: KL divergence and top-1 agreement of the next-token distributions over a
corpus, from full logits (:mod:`evals.kld`; engine dirs only: an endpoint gives no full logits).

Three more measurements, each on the candidate and on the reference (the original checkpoint under
lm-eval's ``hf`` model, float32 on the CPU):

- GSM8K: zero-shot, chat format, greedy, exact match (``onramp_gsm8k`` task YAML).
- Perplexity: ``loglikelihood_rolling`` over ``evals/data/corpus.txt`` (``onramp_perplexity``).
- Greedy agreement: the first K greedy tokens on fixed chat prompts (:mod:`evals.agreement`).

The candidate is a built engine dir, measured through its backend plugin (``builders.backends``:
lm-eval's model for that backend, e.g. ``openvino`` or ``trtllm``) and the engine protocol (the
greedy agreement, :mod:`evals.engine_texts`), or a served endpoint (lm-eval's
``local-chat-completions``; an endpoint gives no log-probabilities, so perplexity is not measured
there). Reference results are cached by the
checkpoint's content hash and the eval configuration, so gating a second build is half the work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.agreement import AgreementResult, candidate_texts_endpoint, compare, reference_texts
from evals.config import GSM8K_TASK, PERPLEXITY_TASK, Profile, agreement_prompts, config_fingerprint, \
    gsm8k_file, load_profile, reference_threads, resolve_tasks
from evals.engine_texts import engine_greedy_texts
from evals.errors import EvalError
from evals.kld import KLDResult, compare_logits, engine_logits_model
from onramp.files import write_text_atomic

log = logging.getLogger(__name__)


class LmEvalScores(BaseModel):
    """What one lm-eval run measured on one model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="lm-eval model type: hf, openvino, local-chat-completions")
    gsm8k_accuracy: float | None = Field(None, description="exact match, flexible-extract filter")
    gsm8k_accuracy_strict: float | None = None
    gsm8k_n: int = 0
    word_perplexity: float | None = None
    byte_perplexity: float | None = None
    bits_per_byte: float | None = None
    perplexity_docs: int = 0
    seconds: float = 0.0
    lm_eval_version: str = ""


class ReferenceResults(BaseModel):
    """The reference side of a quality run; cached on disk."""

    model_config = ConfigDict(extra="forbid")

    key: str
    scores: LmEvalScores
    greedy_texts: list[str]


class QualityReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(description="engine dir or endpoint URL")
    candidate_kind: str = Field(description="the engine's backend (openvino, tensorrt_llm, ...) or endpoint")
    reference: str
    profile: Profile
    config_fingerprint: str
    candidate_scores: LmEvalScores
    reference_scores: LmEvalScores
    reference_cached: bool = False
    agreement: AgreementResult
    kld: KLDResult | None = None
    kld_not_measured: str | None = Field(None, description="why the KL divergence was not measured")
    seconds: float
    created: str

    def metrics(self) -> dict[str, float]:
        """Flat metrics for gates and MLflow; a metric that was not measured is absent."""
        c, r = self.candidate_scores, self.reference_scores
        out: dict[str, float] = {
            "greedy_agreement": self.agreement.identical,
            "token_agreement": self.agreement.token_agreement,
        }
        if self.kld is not None:
            out.update(self.kld.metrics())
        if c.word_perplexity is not None and r.word_perplexity is not None:
            out["candidate_word_perplexity"] = c.word_perplexity
            out["reference_word_perplexity"] = r.word_perplexity
            out["perplexity_ratio"] = c.word_perplexity / r.word_perplexity
        if c.gsm8k_accuracy is not None and r.gsm8k_accuracy is not None:
            out["candidate_gsm8k_accuracy"] = c.gsm8k_accuracy
            out["reference_gsm8k_accuracy"] = r.gsm8k_accuracy
            out["gsm8k_accuracy_drop"] = r.gsm8k_accuracy - c.gsm8k_accuracy
        return out

    def to_markdown(self) -> str:
        c, r = self.candidate_scores, self.reference_scores

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4g}"

        lines = [
            f"## Quality: `{Path(self.candidate).name or self.candidate}` vs reference",
            "",
            f"candidate `{self.candidate}` ({self.candidate_kind}); reference `{self.reference}` (lm-eval hf, "
            f"float32); profile **{self.profile.name}**; lm-eval {c.lm_eval_version}; config {self.config_fingerprint}",
            "",
            "| metric | candidate | reference |",
            "|---|---|---|",
            f"| GSM8K exact match (flexible, n={c.gsm8k_n}) | {fmt(c.gsm8k_accuracy)} | {fmt(r.gsm8k_accuracy)} |",
            f"| GSM8K exact match (strict) | {fmt(c.gsm8k_accuracy_strict)} | {fmt(r.gsm8k_accuracy_strict)} |",
            f"| word perplexity ({c.perplexity_docs} docs) | {fmt(c.word_perplexity)} | {fmt(r.word_perplexity)} |",
            f"| bits per byte | {fmt(c.bits_per_byte)} | {fmt(r.bits_per_byte)} |",
            f"| lm-eval seconds | {c.seconds:.1f} | {r.seconds:.1f}{' (cached)' if self.reference_cached else ''} |",
            "",
            f"Greedy agreement on {self.agreement.n_prompts} prompts, first {self.agreement.k} tokens: "
            f"identical {self.agreement.identical:.3f}, token agreement {self.agreement.token_agreement:.3f}.",
            "",
            self.kld.to_markdown() if self.kld is not None else
            f"KL divergence and top-1 agreement: not measured ({self.kld_not_measured}).\n",
        ]
        return "\n".join(lines)


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _hash_checkpoint(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.is_file() and (file.suffix in (".safetensors", ".json", ".jinja", ".txt", ".model")):
            digest.update(file.name.encode())
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _offline_env():
    """Hub and datasets offline for one lm-eval run, restored afterwards.

    Setting these for the whole process would leak into everything after the eval (a later
    Hub pull in the same worker, every child process), so they are scoped to the run.
    huggingface_hub reads HF_HUB_OFFLINE once at import: import it first, outside the scope.
    """
    import huggingface_hub.constants  # noqa: F401  (freeze its online default before we flip the env)

    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")
    saved_env = {name: os.environ.get(name) for name in names}
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import datasets.config
    except ImportError:  # pragma: no cover - datasets comes with lm-eval
        datasets = None
    saved_flags = None
    if datasets is not None:
        saved_flags = (datasets.config.HF_DATASETS_OFFLINE, datasets.config.HF_HUB_OFFLINE)
        datasets.config.HF_DATASETS_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if saved_flags is not None:
            datasets.config.HF_DATASETS_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved_flags


def _pick(results: dict, task: str, metric: str) -> float | None:
    value = (results.get(task) or {}).get(metric)
    return None if value is None or value == "N/A" else float(value)


def _simple_evaluate(model: str, model_args: dict[str, Any], tasks: list[str], tasks_dir: Path,
                     batch_size: int) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        batch_size=batch_size,
        apply_chat_template=True,
        log_samples=False,
        bootstrap_iters=0,
        verbosity="WARNING",
    )


def run_lm_eval(model: str, model_args: dict[str, Any], profile: Profile, tasks_dir: Path,
                *, tasks: tuple[str, ...] = (GSM8K_TASK, PERPLEXITY_TASK)) -> LmEvalScores:
    """One lm_eval.simple_evaluate run of the onramp tasks on one model; returns the scores."""
    start = time.monotonic()
    try:
        with _offline_env():
            out = _simple_evaluate(
                model, model_args, list(tasks), tasks_dir, 1 if model.startswith("local-") else profile.batch_size)
    except EvalError:
        raise
    except Exception as exc:  # lm-eval and the backends raise anything
        raise EvalError(f"lm-eval ({model}) failed on {model_args.get('pretrained') or model_args.get('base_url')}: "
                        f"{type(exc).__name__}: {exc}",
                        "check that the directory is a complete checkpoint / engine (or the endpoint is up); "
                        "run with -v for lm-eval's log") from exc
    results = out["results"]
    n_samples = out.get("n-samples") or {}
    scores = LmEvalScores(
        model=model,
        gsm8k_accuracy=_pick(results, GSM8K_TASK, "exact_match,flexible-extract"),
        gsm8k_accuracy_strict=_pick(results, GSM8K_TASK, "exact_match,strict-match"),
        gsm8k_n=int((n_samples.get(GSM8K_TASK) or {}).get("effective", 0)),
        word_perplexity=_pick(results, PERPLEXITY_TASK, "word_perplexity,none"),
        byte_perplexity=_pick(results, PERPLEXITY_TASK, "byte_perplexity,none"),
        bits_per_byte=_pick(results, PERPLEXITY_TASK, "bits_per_byte,none"),
        perplexity_docs=int((n_samples.get(PERPLEXITY_TASK) or {}).get("effective", 0)),
        seconds=round(time.monotonic() - start, 2),
        lm_eval_version=_lm_eval_version(),
    )
    log.info("lm-eval %s: %s", model, scores.model_dump())
    return scores


def _write_gsm8k_subset(tasks_dir: Path, profile: Profile) -> None:
    """Point the resolved GSM8K task at the first ``gsm8k_limit`` problems."""
    if not profile.gsm8k_limit:
        return
    subset = tasks_dir / "gsm8k_subset.jsonl"
    with open(gsm8k_file(), encoding="utf-8") as src:
        lines = [line for _, line in zip(range(profile.gsm8k_limit), src, strict=False)]
    subset.write_text("".join(lines), encoding="utf-8")
    task_yaml = tasks_dir / f"{GSM8K_TASK}.yaml"
    task_yaml.write_text(task_yaml.read_text().replace(str(gsm8k_file()), str(subset)))


def check_engine_dir(engine_dir: Path) -> str:
    """A built engine dir: manifest checksums verified when it has one, and complete for its backend
    (the backend plugin says what it needs). Returns the backend's name."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise EvalError(f"engine directory {engine_dir} does not exist",
                        "pass the directory `onramp build` printed (or an optimum-cli OpenVINO export)")
    if (engine_dir / "manifest.json").is_file():
        from builders.manifest import read_manifest, verify_files
        from onramp.errors import OnrampError

        try:
            verify_files(engine_dir, read_manifest(engine_dir))
        except OnrampError as err:
            raise EvalError(f"engine {engine_dir} failed verification: {err.what}", err.fix) from None
    else:
        log.warning("%s has no manifest.json: evaluating it unverified", engine_dir)
    from builders.backends import backend_for_engine
    from onramp.errors import OnrampError

    try:
        backend = backend_for_engine(engine_dir)
    except OnrampError as err:
        raise EvalError(f"engine {engine_dir}: {err.what}", err.fix) from None
    problem = backend.engine_problem(engine_dir)
    if problem:
        raise EvalError(f"{engine_dir} {problem}",
                        f"pass an engine directory built by `onramp build` (backend {backend.name})")
    return backend.name


def reference_results(reference_dir: Path, profile: Profile, tasks_dir: Path, prompts: list[str],
                      cache_dir: Path | None, checkpoint_hash: str | None = None) -> tuple[ReferenceResults, bool]:
    """The reference's scores and greedy texts, from the cache when the same inputs were seen."""
    import transformers

    key = hashlib.sha256(json.dumps([
        checkpoint_hash or _hash_checkpoint(reference_dir), config_fingerprint(profile, lm_eval_only=True),
        _lm_eval_version(),
        transformers.__version__, "float32"]).encode()).hexdigest()[:24]
    cache_file = Path(cache_dir) / "evals" / f"reference-{key}.json" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        try:
            cached = ReferenceResults.model_validate_json(cache_file.read_text())
            if cached.key == key:
                return cached, True
        except ValueError:
            log.warning("ignoring unreadable reference cache %s", cache_file)
    with reference_threads():
        scores = run_lm_eval("hf", {"pretrained": str(reference_dir), "device": "cpu", "dtype": "float32"},
                             profile, tasks_dir)
        texts = reference_texts(reference_dir, prompts, profile.agreement_k)
    result = ReferenceResults(key=key, scores=scores, greedy_texts=texts)
    if cache_file is not None:
        write_text_atomic(cache_file, result.model_dump_json(indent=1))
    return result, False


def run_quality(engine_dir: str | Path, reference_dir: str | Path, profile: str | Profile = "quick", *,
                model: str | None = None, api_key: str | None = None,
                cache_dir: Path | None = None, use_cache: bool = True) -> QualityReport:
    """Evaluate a candidate (engine dir, or an ``http(s)://`` endpoint with ``model``) against the
    reference checkpoint; every number comes from the runs made here (or cached reference runs)."""
    start = time.monotonic()
    prof = load_profile(profile)
    reference_dir = Path(reference_dir)
    if not (reference_dir / "config.json").is_file() or not list(reference_dir.glob("*.safetensors")):
        raise EvalError(f"reference {reference_dir} is not a safetensors checkpoint directory",
                        "pass --reference with the original checkpoint (e.g. `onramp reference-model` prints one)")
    is_endpoint = str(engine_dir).startswith(("http://", "https://"))
    if is_endpoint and not model:
        raise EvalError(f"endpoint {engine_dir} needs a served model name", "pass --model NAME")
    backend = "endpoint"
    if not is_endpoint:
        engine_dir = Path(engine_dir)
        backend = check_engine_dir(engine_dir)
    if cache_dir is None and use_cache:
        from onramp.settings import load_settings

        cache_dir = load_settings().cache_dir
    prompts = agreement_prompts()
    if prof.agreement_prompts:
        prompts = prompts[: prof.agreement_prompts]

    with tempfile.TemporaryDirectory(prefix="onramp-evals-") as tmp:
        tasks_dir = resolve_tasks(Path(tmp) / "tasks", prof)
        _write_gsm8k_subset(tasks_dir, prof)
        checkpoint_hash = _hash_checkpoint(reference_dir)
        ref, cached = reference_results(reference_dir, prof, tasks_dir, prompts, cache_dir if use_cache else None,
                                        checkpoint_hash)
        if is_endpoint:
            base = str(engine_dir).rstrip("/")
            args = {"base_url": f"{base}/v1/chat/completions", "model": model, "num_concurrent": 1,
                    "max_retries": 2, "tokenizer_backend": None, "tokenized_requests": False,
                    "max_gen_toks": prof.gsm8k_max_gen_toks}
            if api_key:  # lm-eval's API models send `header` as is (else $OPENAI_API_KEY)
                args["header"] = {"Authorization": f"Bearer {api_key}"}
            cand = run_lm_eval("local-chat-completions", args, prof, tasks_dir, tasks=(GSM8K_TASK,))
            texts = candidate_texts_endpoint(base, model, prompts, prof.agreement_k, api_key=api_key)
        else:
            from builders.backends import get_backend

            lm_eval_model, lm_eval_args = get_backend(backend).lm_eval_model(engine_dir, Path(tmp))
            cand = run_lm_eval(lm_eval_model, lm_eval_args, prof, tasks_dir)
            texts = engine_greedy_texts(engine_dir, prompts, prof.agreement_k)
    kld, kld_not_measured = None, None
    if is_endpoint:
        kld_not_measured = "an endpoint returns no full next-token logits; evaluate the engine directory"
    else:
        kld = compare_logits(reference_dir, engine_logits_model(engine_dir), prof, checkpoint_hash=checkpoint_hash,
                             cache_dir=cache_dir if use_cache else None)
    agreement = compare(reference_dir, ref.greedy_texts, texts, prof.agreement_k)
    return QualityReport(
        candidate=str(engine_dir), candidate_kind=backend,
        reference=str(reference_dir), profile=prof, config_fingerprint=config_fingerprint(prof),
        candidate_scores=cand, reference_scores=ref.scores, reference_cached=cached, agreement=agreement,
        kld=kld, kld_not_measured=kld_not_measured,
        seconds=round(time.monotonic() - start, 2),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
