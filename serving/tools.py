"""Tool calling: OpenAI's ``tools`` / ``tool_choice`` in, ``message.tool_calls`` out.

The model writes a call as ``<tool_call>{"name": N, "arguments": {...}}</tool_call>`` (the Hermes
format most open chat models are tuned on). With ``tool_choice`` "required" or a named function
the whole output is one call object, constrained to ``{"name": <a tool>, "arguments": <its
parameters schema>}``; with "auto" the model writes text, and a ``<tool_call>`` block it opens is
constrained the same way (a "tool_tags" constraint); with "none" the tools are not shown.

History: assistant messages with ``tool_calls`` and ``role: "tool"`` results are handed to the
model's own chat template. A template that knows nothing of tools (SmolLM2's) gets what a
tool-aware one would render: the tool list in the system message, calls as ``<tool_call>``
blocks, results as ``<tool_response>`` blocks in a user turn.

:class:`ToolCallParser` turns the generated text, streamed or whole, into content and tool-call
pieces shaped as the openai SDK assembles them (first piece of a call: id, type and name, with
``arguments`` ""; then argument text).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from serving.engine import ChatMessage, Constraint
from serving.errors import RequestError

__all__ = ["ToolCallParser", "ToolPiece", "chat_history", "parse_tools", "tool_constraint"]

START, END = "<tool_call>", "</tool_call>"

_SYSTEM_TOOLS = (
    "You are a function calling AI model. You may call one or more functions to assist with the user query. "
    "Here are the available tools:\n<tools>\n{tools}\n</tools>\n"
    "For each function call, return a json object with the function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>"
)


def parse_tools(tools: Any, tool_choice: Any) -> tuple[list[dict], str | None]:
    """Check ``tools`` and ``tool_choice``; returns (tools, mode) with mode None (no tools, or
    "none"), "auto", "required" or the forced function's name. 400 naming the bad parameter."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise RequestError("tool_choice needs tools", param="tool_choice", code="invalid_value")
        return [], None
    if not isinstance(tools, list):
        raise RequestError("tools must be a list of {type: 'function', function: {...}}", param="tools")
    names = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise RequestError(f"tools[{i}] must be {{type: 'function', function: {{name, parameters}}}}",
                               param=f"tools[{i}]", code="invalid_value")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise RequestError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'",
                               param=f"tools[{i}].function.name", code="invalid_value")
        if name in names:
            raise RequestError(f"tools[{i}]: function {name!r} is defined twice", param=f"tools[{i}].function.name",
                               code="invalid_value")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON Schema object",
                               param=f"tools[{i}].function.parameters", code="invalid_value")
        names.append(name)
    if tool_choice in (None, "auto"):
        return tools, "auto"
    if tool_choice == "none":
        return tools, None
    if tool_choice == "required":
        return tools, "required"
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise RequestError("tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}",
                           param="tool_choice", code="invalid_value")
    if name not in names:
        raise RequestError(f"tool_choice names function {name!r}, which is not in tools ({', '.join(names)})",
                           param="tool_choice", code="invalid_value")
    return tools, name


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def _call_schema(tool: dict) -> dict:
    return {"type": "object", "properties": {"name": {"const": tool["function"]["name"]},
                                             "arguments": _parameters(tool)},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_constraint(tools: list[dict], mode: str | None, *, parallel: bool = True) -> Constraint | None:
    """The constraint for a tool mode (see :func:`parse_tools`). With "auto" and ``parallel``
    False, the constraint's ``value`` is "single": at most one call block is constrained."""
    if mode is None or not tools:
        return None
    if mode == "auto":
        return Constraint(kind="tool_tags", param="tools", value="" if parallel else "single", tools=tuple(
            (t["function"]["name"], json.dumps(_parameters(t), separators=(",", ":"))) for t in tools))
    chosen = tools if mode == "required" else [t for t in tools if t["function"]["name"] == mode]
    schema = _call_schema(chosen[0]) if len(chosen) == 1 else {"anyOf": [_call_schema(t) for t in chosen]}
    return Constraint(kind="json_schema", value=json.dumps(schema, separators=(",", ":")), param="tools")


def _arguments_text(args: Any) -> str:
    return args if isinstance(args, str) else json.dumps(args)


def _arguments_obj(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def chat_history(messages: list[ChatMessage], tools: list[dict] | None,
                 template: str) -> tuple[list[dict], list[dict] | None]:
    """(history, tools) for ``apply_chat_template``: as is for a template that renders tools,
    rewritten into plain system/user/assistant turns for one that does not."""
    knows_tools = "tools" in template
    knows_calls = "tool_calls" in template
    knows_tool_role = "tool" in template.replace("tools", "").replace("tool_calls", "")
    history: list[dict] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            if knows_calls:
                calls = [{"id": c.get("id"), "type": "function",
                          "function": {"name": c["function"]["name"],
                                       "arguments": _arguments_obj(c["function"].get("arguments", {}))}}
                         for c in m.tool_calls]
                history.append({"role": "assistant", "content": m.content, "tool_calls": calls})
            else:
                blocks = [f"{START}\n" + json.dumps({"name": c["function"]["name"],
                                                     "arguments": _arguments_obj(c["function"].get("arguments", {}))})
                          + f"\n{END}" for c in m.tool_calls]
                history.append({"role": "assistant", "content": "\n".join([m.content, *blocks] if m.content
                                                                          else blocks)})
        elif m.role == "tool":
            if knows_tool_role:
                history.append({"role": "tool", "content": m.content, "tool_call_id": m.tool_call_id or ""})
            else:
                block = f"<tool_response>\n{m.content}\n</tool_response>"
                if history and history[-1]["role"] == "user" and history[-1].get("_tool"):
                    history[-1]["content"] += "\n" + block  # several results in one turn
                else:
                    history.append({"role": "user", "content": block, "_tool": True})
        else:
            history.append({"role": m.role, "content": m.content})
    for h in history:
        h.pop("_tool", None)
    if not tools:
        return history, None
    if knows_tools:
        return history, tools
    listing = "\n".join(json.dumps(t["function"]) for t in tools)
    text = _SYSTEM_TOOLS.format(tools=listing)
    if history and history[0]["role"] == "system":
        history[0] = {"role": "system", "content": f"{history[0]['content']}\n\n{text}"}
    else:
        history.insert(0, {"role": "system", "content": text})
    return history, None


# ---------------------------------------------------------------------- parsing the output
@dataclass
class ToolPiece:
    """A piece of output: ``content`` text, or part of tool call ``index`` (``id`` and ``name``
    on its first piece, then ``arguments`` text)."""

    content: str | None = None
    index: int = 0
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


# the call object up to its arguments (matched once the arguments have begun, so the split of a
# streamed text never changes where they start)
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)', re.S)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolCallParser:
    """Splits generated text into content and tool calls, incrementally.

    ``forced=True``: the whole output is one call object (tool_choice required / named).
    Otherwise text is content until ``<tool_call>``, and each block up to ``</tool_call>`` is a call.
    """

    def __init__(self, forced: bool = False):
        self.forced = forced
        self._buf = ""
        self._in_call = forced
        self._header_done = False
        self._emitted = 0  # argument characters of the current call already given out
        self.calls: list[dict] = []  # finished and running calls, OpenAI-shaped
        self.content = ""

    def _new_call(self, name: str) -> ToolPiece:
        call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": name, "arguments": ""}}
        self.calls.append(call)
        return ToolPiece(index=len(self.calls) - 1, id=call["id"], name=name, arguments="")

    def _args(self, piece: str) -> ToolPiece | None:
        if not piece:
            return None
        self.calls[-1]["function"]["arguments"] += piece
        self._emitted += len(piece)
        return ToolPiece(index=len(self.calls) - 1, arguments=piece)

    @staticmethod
    def _strip_close(args: str) -> str:
        """The arguments without the call object's closing brace (and the whitespace around it)."""
        args = args.rstrip()
        return args[:-1].rstrip() if args.endswith("}") else args

    def feed(self, text: str) -> list[ToolPiece]:
        self._buf += text
        out: list[ToolPiece] = []
        while True:
            if not self._in_call:
                pos = self._buf.find(START)
                if pos < 0:
                    keep = _partial_suffix(self._buf, START)
                    emit, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                    if emit:
                        self.content += emit
                        out.append(ToolPiece(content=emit))
                    return out
                if pos:
                    self.content += self._buf[:pos]
                    out.append(ToolPiece(content=self._buf[:pos]))
                self._buf = self._buf[pos + len(START):]
                self._in_call, self._header_done, self._emitted = True, False, 0
                continue
            if not self._header_done:
                m = _HEADER.match(self._buf)
                if m is None:
                    return out
                try:
                    name = json.loads(f'"{m.group(1)}"')
                except ValueError:
                    name = m.group(1)
                out.append(self._new_call(name))
                self._buf = self._buf[m.end():]
                self._header_done = True
            if not self.forced:
                pos = self._buf.find(END)
                if pos >= 0:
                    final = self._strip_close(self._buf[:pos])
                    piece = self._args(final[self._emitted:])
                    if piece:
                        out.append(piece)
                    self._buf = self._buf[pos + len(END):].lstrip("\n")
                    self._in_call = False
                    continue
            # hold back what may be the object's closing brace (and the end tag's start)
            cut = len(self._buf) - (0 if self.forced else _partial_suffix(self._buf, END))
            held = self._buf[:cut].rstrip()
            if held.endswith("}"):
                held = held[:-1]
            cut = max(len(held), self._emitted)
            piece = self._args(self._buf[self._emitted:cut])
            if piece:
                out.append(piece)
            return out

    def finish(self) -> list[ToolPiece]:
        """End of generation: the rest (a call cut short keeps the arguments it has)."""
        out: list[ToolPiece] = []
        if self._in_call and self._header_done:
            final = self._strip_close(self._buf) if self.forced else self._buf
            piece = self._args(final[self._emitted:])
            if piece:
                out.append(piece)
        elif self._buf:
            text = (START if self._in_call and not self.forced else "") + self._buf
            self.content += text
            out.append(ToolPiece(content=text))
        self._buf = ""
        return out
