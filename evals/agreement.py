"""Greedy agreement: do candidate and reference start their answers the same way?

Both answer the same fixed chat prompts (``tasks/agreement_prompts.yaml``) greedily. Each
answer's text is tokenized with the reference tokenizer and the first K tokens compared; the
candidate runs through its own tokenizer, chat template and detokenizer, so a wrong tokenizer
shows here as much as damaged weights do.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from evals.errors import EvalError

# Generate a few tokens past K so that re-tokenizing the text does not cut the K-th token short.
_SLACK = 8


class PromptAgreement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    matched: int  # tokens equal before the first difference (at most K)
    identical: bool
    reference: str
    candidate: str


class AgreementResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int
    n_prompts: int
    identical: float  # share of prompts whose first K tokens are identical
    token_agreement: float  # mean share of the first K tokens matched before the first difference
    prompts: list[PromptAgreement]


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def reference_texts(reference_dir: Path, prompts: list[str], k: int) -> list[str]:
    """Greedy answers of the original checkpoint (transformers, float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(reference_dir)
    model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32)
    model.eval()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tok.apply_chat_template(_messages(prompt), add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)
            gen = model.generate(**ids, max_new_tokens=k + _SLACK, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
            out.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def candidate_texts_endpoint(base_url: str, model: str, prompts: list[str], k: int, *,
                             api_key: str | None = None, timeout: float = 120.0) -> list[str]:
    """Greedy answers of a served model through its OpenAI-compatible chat endpoint."""
    from onramp.endpoint import EndpointClient, EndpointError

    try:
        with EndpointClient(base_url, api_key, timeout=timeout) as endpoint:
            return [endpoint.text(endpoint.chat(model, _messages(prompt), max_tokens=k + _SLACK, stream=False))
                    for prompt in prompts]
    except EndpointError as exc:
        raise EvalError(exc.what, exc.fix) from None


def compare(reference_dir: Path, reference: list[str], candidate: list[str], k: int) -> AgreementResult:
    """Tokenize both sides with the reference tokenizer; compare the first ``k`` tokens."""
    from transformers import AutoTokenizer

    if len(reference) != len(candidate) or not reference:
        raise EvalError(f"agreement needs the same non-zero number of answers (got {len(reference)} reference, "
                        f"{len(candidate)} candidate)", "rerun the evaluation")
    tok = AutoTokenizer.from_pretrained(reference_dir)
    rows = []
    for i, (ref_text, cand_text) in enumerate(zip(reference, candidate, strict=True)):
        r = tok.encode(ref_text, add_special_tokens=False)[:k]
        c = tok.encode(cand_text, add_special_tokens=False)[:k]
        matched = 0
        for a, b in zip(r, c, strict=False):
            if a != b:
                break
            matched += 1
        rows.append(PromptAgreement(index=i, matched=matched, identical=r == c,
                                    reference=ref_text, candidate=cand_text))
    denominators = [max(1, min(k, max(len(tok.encode(row.reference, add_special_tokens=False)),
                                      len(tok.encode(row.candidate, add_special_tokens=False)))))
                    for row in rows]
    token_agreement = sum(row.matched / d for row, d in zip(rows, denominators, strict=True)) / len(rows)
    return AgreementResult(k=k, n_prompts=len(rows), identical=sum(r.identical for r in rows) / len(rows),
                           token_agreement=round(token_agreement, 6), prompts=rows)
