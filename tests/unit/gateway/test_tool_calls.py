"""Tool calling and structured-output fields of the OpenAI API: parsing, prompt format, reading calls back."""

from __future__ import annotations

import json

import pytest

from llmserve.common.errors import InvalidArgument
from llmserve.gateway.http.openai_format import parse_request
from llmserve.gateway.http.tool_calls import CallBuffer, parse_calls, render_messages

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "noop"}}]


def parse_tools(fields: dict):
    """The tools of a chat body with these fields, through the typed parse."""
    return parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}, chat=True).tools


def test_tool_choice_modes():
    assert parse_tools({"tools": TOOLS}).choice == "auto"
    assert parse_tools({"tools": TOOLS, "tool_choice": "none"}) is None
    assert parse_tools({"tools": TOOLS, "tool_choice": "required"}).forced
    named = parse_tools({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "noop"}}})
    assert named.named == "noop"
    for bad, param in (({"tools": "x"}, "tools"), ({"tools": [{"type": "code"}]}, "tools[0]"),
                       ({"tool_choice": "required"}, "tool_choice"),
                       ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
                       ({"tools": [TOOLS[0] | {"extra": 1}]}, "tools[0].extra"),
                       ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
                        "tools[0].function.parameters")):
        with pytest.raises(InvalidArgument) as caught:
            parse_tools(bad)
        assert caught.value.param == param


def test_forced_choice_becomes_a_schema_constraint_and_tools_reach_the_prompt():
    body = {"model": "m", "tools": TOOLS, "tool_choice": "required",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paris?"}]}
    request = parse_request(body, chat=True)
    schema = json.loads(request.params.constraint.value)
    assert [c["properties"]["name"]["const"] for c in schema["anyOf"]] == ["get_weather", "noop"]
    system = request.params.messages[0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in system["content"] and "Call one of them now." in system["content"]
    with pytest.raises(InvalidArgument) as caught:
        parse_request(body | {"response_format": {"type": "json_object"}}, chat=True)
    assert caught.value.param == "tool_choice"


def test_history_with_calls_and_results_renders_as_plain_turns():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    messages = [{"role": "user", "content": "Oslo?"}, {"role": "assistant", "content": "", "tool_calls": calls},
                {"role": "tool", "content": "5C", "tool_call_id": "call_1"}]
    out = render_messages(messages, None)
    assert out[1] == {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'}
    assert out[2] == {"role": "user", "content": "Result of get_weather: 5C"}


def test_auto_reads_calls_only_when_the_whole_completion_is_calls():
    tools = parse_tools({"tools": TOOLS})
    (call,) = parse_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>', tools)
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    assert len(parse_calls('{"name": "noop", "arguments": {}}\n{"name": "noop", "arguments": {}}', tools)) == 2
    assert parse_calls('{"name": "unknown", "arguments": {}}', tools) is None
    assert parse_calls('Sure: {"name": "noop", "arguments": {}}', tools) is None
    assert parse_calls('{"name": "noop"}', tools) is None


def test_call_buffer_holds_possible_calls_and_releases_prose():
    tools = parse_tools({"tools": TOOLS})
    prose = CallBuffer(tools)
    assert prose.feed(" ") == "" and prose.feed("Hello") == " Hello" and prose.feed(" there") == " there"
    assert prose.finish() == ("", None)
    call = CallBuffer(tools)
    assert call.feed('{"name": "noop", ') == "" and call.feed('"arguments": {}}') == ""
    text, calls = call.finish()
    assert text == "" and calls[0]["function"]["name"] == "noop"
    almost = CallBuffer(tools)
    almost.feed("<tool")
    assert almost.feed("box>") == "<toolbox>"


def test_structured_output_fields_and_their_params():
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert parse_request(base | {"response_format": {"type": "json_object"}}, chat=True).params.constraint.kind \
        == "json_object"
    choice = parse_request({"model": "m", "prompt": "x", "structured_outputs": {"choice": ["a", 'b"c']}}, chat=False)
    assert choice.params.constraint.value == 'root ::= "a" | "b\\"c"'
    for extra, param in (({"response_format": {"type": "json_schema", "json_schema": {"name": "n"}}},
                          "response_format.json_schema.schema"),
                         ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
                         ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
                         ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}},
                          "structured_outputs")):
        with pytest.raises(InvalidArgument) as caught:
            parse_request(base | extra, chat=True)
        assert caught.value.param == param
