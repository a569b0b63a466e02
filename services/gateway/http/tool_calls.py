"""Tool calling over the chat API: the prompt format, the constraint, and reading calls back.

The default model's chat template (SmolLM2) knows nothing of tools, so the tools are written
into the system message in one documented format (docs/backend.md, "Tool calling"): each
function as a JSON line, and the rule "to call a function, answer with only a JSON object
{"name": ..., "arguments": {...}}". Earlier assistant calls are shown in that same form, and
`tool` results as a user turn `Result of <name>: <content>`.

`tool_choice`: "none" leaves the tools out; "required" and a named function constrain the
completion to the JSON schema of one call (name and arguments schema of the allowed tools),
so the call always parses; "auto" leaves the model free and reads the completion as a call
when all of it is such JSON objects (one per line, optionally in `<tool_call>` tags or a
``` fence) naming a known tool with an arguments object; anything else is content.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from llmserve.common.errors import InvalidArgument
from llmserve.common.structured import Constraint

from .protocol.chat import NamedToolChoice, Tool

_WRAPPERS = re.compile(r"</?tool_call>|```(?:json)?")
_OPENERS = ("<tool_call>", "```")


@dataclass
class Tools:
    """The request's usable tools and how the model may use them."""

    functions: dict[str, dict]  # name -> {"description": str, "parameters": schema}
    choice: str  # "auto", "required" or "named"
    named: str | None = None

    @property
    def forced(self) -> bool:
        return self.choice != "auto"


def parse_tools(tools: list[Tool] | None, choice: str | NamedToolChoice | None) -> Tools | None:
    """The request's tools and tool_choice (shapes checked by the protocol model); None when
    there are none or tool_choice is none."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidArgument("tool_choice needs tools", param="tool_choice")
        return None
    functions = {t.function.name: {"description": t.function.description or "",
                                   "parameters": t.function.parameters or {"type": "object", "properties": {}}}
                 for t in tools}
    if choice in (None, "auto"):
        return Tools(functions, "auto")
    if choice == "none":
        return None
    if choice == "required":
        return Tools(functions, "required")
    assert isinstance(choice, NamedToolChoice)
    name = choice.function.name
    if name not in functions:
        raise InvalidArgument(f"tool_choice names {name[:64]!r}, which is not in tools", param="tool_choice")
    return Tools(functions, "named", name)


def constraint(tools: Tools) -> Constraint | None:
    """For required and named choices: the schema of one call to an allowed tool."""
    if not tools.forced:
        return None
    names = [tools.named] if tools.named else list(tools.functions)
    cases = [{"type": "object", "properties": {"name": {"const": n}, "arguments": tools.functions[n]["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False} for n in names]
    schema = cases[0] if len(cases) == 1 else {"anyOf": cases}
    return Constraint("json_schema", json.dumps(schema, separators=(",", ":")))


def render_messages(messages: list[dict], tools: Tools | None) -> list[dict[str, str]]:
    """Messages with tool calls and results turned into plain turns, and the tools described."""
    names: dict[str, str] = {}  # tool_call_id -> function name, to label results
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            lines = [m["content"]] if m["content"] else []
            for call in m["tool_calls"]:
                fn = call.get("function", {}) if isinstance(call, dict) else {}
                names[str(call.get("id", ""))] = str(fn.get("name", ""))
                lines.append(json.dumps({"name": fn.get("name"), "arguments": _arguments(fn.get("arguments"))}))
            out.append({"role": "assistant", "content": "\n".join(lines)})
        elif m["role"] == "tool":
            name = names.get(str(m.get("tool_call_id", "")), "the function")
            out.append({"role": "user", "content": f"Result of {name}: {m['content']}"})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools is not None:
        out = _with_tools(out, tools)
    return out


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value if value is not None else {}


def _with_tools(messages: list[dict[str, str]], tools: Tools) -> list[dict[str, str]]:
    lines = [json.dumps({"name": n, "description": f["description"], "parameters": f["parameters"]})
             for n, f in tools.functions.items()]
    block = ("You can call these functions:\n" + "\n".join(lines) + "\nTo call a function, answer with only a "
             'JSON object: {"name": <function name>, "arguments": <arguments object>}.')
    if tools.named:
        block += f" Call {tools.named} now."
    elif tools.choice == "required":
        block += " Call one of them now."
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def parse_calls(text: str, tools: Tools) -> list[dict] | None:
    """The completion as OpenAI `tool_calls`, or None when it is not (only) tool calls."""
    body = _WRAPPERS.sub("\n", text).strip()
    try:
        objs = [json.loads(body)]  # one call, possibly spread over lines
    except ValueError:
        try:
            objs = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError:
            return None
    calls = []
    for obj in objs:
        args = obj.get("arguments", obj.get("parameters")) if isinstance(obj, dict) else None
        if not isinstance(args, dict) or obj.get("name") not in tools.functions:
            return None
        calls.append({"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                      "function": {"name": obj["name"], "arguments": json.dumps(args)}})
    return calls or None


class CallBuffer:
    """Streaming with tools: holds back text that may still turn out to be a tool call.

    Forced choices hold everything (the completion is one call). With "auto", text is held while
    the completion so far could be the start of a call, and released as content once it cannot.
    """

    def __init__(self, tools: Tools):
        self.tools = tools
        self.held = ""
        self.released = False

    def feed(self, text: str) -> str:
        """Text to stream as content now."""
        if self.released:
            return text
        self.held += text
        if self.tools.forced or _may_be_call(self.held):
            return ""
        self.released, out, self.held = True, self.held, ""
        return out

    def finish(self) -> tuple[str, list[dict] | None]:
        """(content still held, the tool calls) at the end of the completion."""
        if self.released:
            return "", None
        calls = parse_calls(self.held, self.tools)
        return ("", calls) if calls else (self.held, None)


def _may_be_call(text: str) -> bool:
    s = text.lstrip()
    return not s or s.startswith("{") or any(o.startswith(s) or s.startswith(o) for o in _OPENERS)
