"""Per-choice state of one chat/completion response: text or tool calls, logprobs, finish, usage.

A request with ``n`` choices gets deltas of all of them interleaved (``Delta.index``);
:class:`Choice` accumulates one of them (through a :class:`~serving.tools.ToolCallParser` when
the request has tools) and :class:`Tally` sums usage across them (the prompt counted once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.engine import Delta, TokenLogprob
from serving.tools import ToolCallParser, ToolPiece

__all__ = ["Choice", "Tally", "chat_logprobs", "tool_call_deltas"]


def _top(t: TokenLogprob) -> list[dict]:
    return [{"token": tok, "logprob": lp, "bytes": list(tok.encode())} for tok, lp in t.top]


def chat_logprobs(logprobs: list[TokenLogprob] | None) -> list[dict] | None:
    """OpenAI's ``logprobs.content`` entries for some tokens."""
    if logprobs is None:
        return None
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()), "top_logprobs": _top(t)}
            for t in logprobs]


def tool_call_deltas(pieces: list[ToolPiece]) -> list[dict]:
    """Streamed ``delta.tool_calls`` entries, as the openai SDK assembles them."""
    out = []
    for p in pieces:
        if p.content is not None:
            continue
        entry: dict[str, Any] = {"index": p.index}
        if p.id is not None:
            entry.update(id=p.id, type="function", function={"name": p.name, "arguments": p.arguments or ""})
        else:
            entry["function"] = {"arguments": p.arguments or ""}
        out.append(entry)
    return out


@dataclass
class Choice:
    index: int
    parser: ToolCallParser | None = None
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None

    def feed(self, d: Delta) -> list[ToolPiece]:
        """Take a delta; returns the new pieces (content and tool-call parts)."""
        if d.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(d.logprobs)
        if self.parser is None:
            pieces = [ToolPiece(content=d.text)] if d.text else []
            self.parts.append(d.text)
        else:
            pieces = self.parser.feed(d.text) if d.text else []
            if d.finish_reason is not None:
                pieces += self.parser.finish()
        if d.finish_reason is not None:
            self.finish_reason = "tool_calls" if self.tool_calls and d.finish_reason == "stop" else d.finish_reason
        return pieces

    @property
    def content(self) -> str:
        return self.parser.content if self.parser is not None else "".join(self.parts)

    @property
    def tool_calls(self) -> list[dict]:
        return self.parser.calls if self.parser is not None else []

    def message(self) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["content"] = self.content.strip() or None
            msg["tool_calls"] = [dict(c, function=dict(c["function"])) for c in self.tool_calls]
        return msg


@dataclass
class Tally:
    """Usage across choices: the prompt once, each choice's completion tokens."""

    prompt_tokens: int = 0
    completion: dict[int, int] = field(default_factory=dict)

    def add(self, d: Delta) -> None:
        self.prompt_tokens = d.prompt_tokens
        self.completion[d.index] = d.completion_tokens

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion.values())

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}
