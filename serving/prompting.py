"""What every backend does to a request before it reaches its runtime, written once: render chat
messages with the model's own template, turn the prompt into token ids, and apply the context
length and ``max_tokens`` policy. A backend supplies its tokenizer's functions; the errors and
their OpenAI shape are the same on every backend.

The policy: a prompt that fills the context alone is refused (400, ``context_length_exceeded``,
naming the prompt's parameter); without ``max_tokens`` the completion may use the rest of the
context (capped by the server's ``max_tokens_default``); with it, prompt + ``max_tokens`` must fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from serving.engine import ChatMessage, GenerationRequest, SamplingParams
from serving.errors import ContextLengthError, RequestError

__all__ = ["completion_budget", "prepare_prompt", "render_chat"]

# apply(history, template, tools or None) -> the rendered prompt text
ApplyTemplate = Callable[[list[dict], str, Any], str]


def render_chat(apply: ApplyTemplate, template: str, messages: Sequence[ChatMessage], tools: list[dict] | None,
                *, model: str) -> str:
    """The prompt text of ``messages`` (and ``tools``) under the model's chat ``template``."""
    if not template:
        raise RequestError(f"model '{model}' has no chat template, so it cannot take messages",
                           param="messages", code="no_chat_template")
    from serving.tools import chat_history

    history, template_tools = chat_history(list(messages), tools, template)
    try:
        return apply(history, template, template_tools or None)
    except Exception as exc:  # noqa: BLE001 - the template itself refused the conversation
        raise RequestError(f"the model's chat template cannot render these messages: "
                           f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}",
                           param="messages", code="invalid_messages") from None


def completion_budget(n_prompt: int, sampling: SamplingParams, limit: int, param: str) -> int:
    """The most tokens the completion may have (see the module docstring), or a ContextLengthError."""
    max_tokens = sampling.max_tokens
    if n_prompt >= limit:
        raise ContextLengthError(
            f"This model's maximum context length is {limit} tokens; the {param} alone has {n_prompt}. "
            f"Shorten the {param}.", param=param)
    if max_tokens is None:
        max_tokens = limit - n_prompt
        if sampling.max_tokens_default:
            max_tokens = min(max_tokens, sampling.max_tokens_default)
    elif n_prompt + max_tokens > limit:
        raise ContextLengthError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the {param}, {max_tokens} for the completion). "
            f"Lower max_tokens to at most {limit - n_prompt} or shorten the {param}.")
    return max_tokens


def prepare_prompt(request: GenerationRequest, *, encode: Callable[[str], list[int]],
                   render: Callable[[Sequence[ChatMessage], list[dict] | None], str], vocab_size: int,
                   max_context: int) -> tuple[list[int], int]:
    """(prompt token ids, the completion's token budget) of ``request``: messages rendered with
    ``render`` and encoded with ``encode`` (no special tokens added: the template has them), a
    prompt encoded, or token ids checked against the vocabulary."""
    if request.prompt_ids is not None:
        ids, param = list(request.prompt_ids), "prompt"
        if any(not 0 <= i < vocab_size for i in ids):
            raise RequestError(f"the prompt's token ids must be in [0, {vocab_size})", param="prompt")
    elif request.messages is not None:
        ids, param = encode(render(request.messages, request.tools)), "messages"
    else:
        ids, param = encode(request.prompt or ""), "prompt"
    if not ids:
        raise RequestError(f"the {param} is empty", param=param)
    return ids, completion_budget(len(ids), request.sampling, max_context, param)
