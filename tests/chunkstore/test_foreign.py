"""Converting other apps' exports (ChatGPT, Open WebUI) to foreign export lines.

The fixture exports under ``data/`` are written after the real formats (see the docstrings of
``read_chatgpt`` and ``read_openwebui`` for where each field comes from): branches, hidden
messages, images and files, tool calls, missing times, and conversations that cannot convert.
Every converted conversation is checked against the export format (``check_lines``), and the
property tests feed any JSON at all: nothing but ``InvalidArgument`` for a wrong top-level
shape ever escapes, and every conversation in comes out, converted or ``Skipped``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from chunkstore_support import STRESS
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore import InvalidArgument
from chunkstore._foreign import Skipped, _epoch_seconds, _iso, read_chatgpt, read_openwebui
from chunkstore._validate import (
    MAX_METADATA_VALUE,
    ROLES,
    check_content,
    check_metadata,
    check_short,
    check_title,
)

DATA = Path(__file__).parent / "data"
EXAMPLES = 2000 if STRESS else 200

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
CONVERSATION_KEYS = {
    "type", "id", "user_id", "title", "created_at", "updated_at", "pinned", "metadata",
    "participants", "deleted_at", "last_seq",
}  # fmt: skip
MESSAGE_KEYS = {
    "type", "conversation_id", "id", "seq", "role", "content", "status", "created_at",
    "completed_at", "agent_id", "finish_reason", "usage", "tool_calls", "tool_call_id", "name",
    "error", "token_count", "reply_to",
}  # fmt: skip
OPENAI_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_time(value: Any) -> str:
    assert isinstance(value, str) and ISO.fullmatch(value), value
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def check_lines(lines: Any, source: str) -> None:
    """One converted conversation is valid foreign export lines (the lead's format, item 5)."""
    assert isinstance(lines, list) and len(lines) >= 2
    conv, messages = lines[0], lines[1:]
    assert set(conv) == CONVERSATION_KEYS
    assert conv["type"] == "conversation"
    assert conv["id"] is None and conv["user_id"] is None and conv["deleted_at"] is None
    check_title(conv["title"])
    assert check_time(conv["created_at"]) <= check_time(conv["updated_at"])
    assert isinstance(conv["pinned"], bool)
    assert check_metadata(conv["metadata"]) == conv["metadata"]
    assert conv["metadata"]["source"] == source
    assert 0 < len(conv["metadata"]["source_id"]) <= MAX_METADATA_VALUE
    assert conv["participants"] == []
    assert conv["last_seq"] == len(messages)
    for seq, m in enumerate(messages, start=1):
        assert set(m) == MESSAGE_KEYS
        assert m["type"] == "message"
        assert m["conversation_id"] is None and m["id"] is None
        assert m["seq"] == seq
        assert m["role"] in ROLES
        check_content(m["content"])
        assert m["status"] in ("complete", "error", "interrupted")
        created = check_time(m["created_at"])
        if m["completed_at"] is None:
            assert m["status"] == "interrupted"
        else:
            assert check_time(m["completed_at"]) >= created
        for short in ("agent_id", "finish_reason", "tool_call_id", "name"):
            if m[short] is not None:
                check_short(short, m[short])
        assert m["usage"] is None or isinstance(m["usage"], dict)
        assert m["token_count"] == 0
        assert m["reply_to"] is None or 1 <= m["reply_to"] < seq
    check_tool_pairs(messages)
    orjson.dumps(lines)  # what the store writes with: UTF-8, 64-bit integers


def check_tool_pairs(messages: list[dict[str, Any]]) -> None:
    """OpenAI's rule for history (the edge replays it upstream): an assistant message with
    tool calls is followed by tool messages answering them, and a tool message answers the
    calls just before it."""
    open_ids: set[str] | None = None
    answered: set[str] = set()
    for m in messages:
        if m["role"] == "tool":
            assert open_ids is not None, "a tool message that answers no call"
            assert m["tool_call_id"] in open_ids
            assert m["content"], "an empty result, which the edge does not replay"
            answered.add(m["tool_call_id"])
            continue
        assert open_ids is None or answered == open_ids, "a tool call without an answer"
        open_ids, answered = None, set()
        if m["tool_calls"] is not None:
            assert m["role"] == "assistant" and m["tool_calls"]
            for call in m["tool_calls"]:
                assert call["type"] == "function" and check_short("id", call["id"])
                assert OPENAI_FUNCTION_NAME.fullmatch(call["function"]["name"])
                assert isinstance(call["function"]["arguments"], str)
            open_ids = {call["id"] for call in m["tool_calls"]}
    assert open_ids is None or answered == open_ids, "a tool call without an answer"


def convert(reader: Any, data: Any, source: str) -> list[list[dict[str, Any]] | Skipped]:
    out = list(reader(data))
    for item in out:
        if isinstance(item, Skipped):
            assert isinstance(item.reason, str) and item.reason and "\n" not in item.reason
        else:
            check_lines(item, source)
    return out


def chatgpt(data: Any) -> list[list[dict[str, Any]] | Skipped]:
    return convert(read_chatgpt, data, "chatgpt")


def openwebui(data: Any) -> list[list[dict[str, Any]] | Skipped]:
    return convert(read_openwebui, data, "openwebui")


def converted(item: Any) -> list[dict[str, Any]]:
    assert not isinstance(item, Skipped), item
    return item  # type: ignore[no-any-return]


def skipped(item: Any) -> Skipped:
    assert isinstance(item, Skipped), item
    return item


def contents(lines: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["role"], m["content"]) for m in lines[1:]]


# -- ChatGPT: the fixture export -----------------------------------------------------------------


@pytest.fixture
def chatgpt_export() -> Any:
    return json.loads((DATA / "chatgpt_conversations.json").read_text(encoding="utf-8"))


def test_chatgpt_every_conversation_comes_out_converted_or_skipped(chatgpt_export: Any) -> None:
    out = chatgpt(chatgpt_export)
    assert len(out) == len(chatgpt_export) == 6
    assert [isinstance(item, Skipped) for item in out] == [False, False, True, True, True, True]


def test_chatgpt_imports_the_branch_shown_without_hidden_messages(chatgpt_export: Any) -> None:
    lines = converted(chatgpt(chatgpt_export)[0])
    conv = lines[0]
    assert conv["title"] == "B-trees"
    assert conv["created_at"] == "2024-05-01T10:40:00.000000Z"
    assert conv["updated_at"] == "2024-05-01T10:41:01.000000Z"
    # The regenerated answer shown (a2), not the first one (a1); no hidden system message, no
    # custom instructions; the image's text kept.
    assert contents(lines) == [
        ("user", "What is a B-tree?"),
        ("assistant", "A B-tree is a self-balancing search tree\n whose nodes hold many keys."),
        ("user", "Is this one?"),
        ("assistant", "Yes: every leaf is at the same depth."),
    ]
    meta = conv["metadata"]
    assert meta["source"] == "chatgpt"
    assert meta["source_id"] == "6630a1b2-0001-8000-a000-000000000001"
    assert meta["model"] == "gpt-4o"
    assert meta["archived"] == "true"
    assert conv["pinned"] is False
    # What was lost is said: the image, the file attached with it, a message time.
    note = meta["import_note"]
    assert "1 image(s)" in note and "1 attached file(s)" in note
    assert "1 message time(s) missing, set to the conversation's" in note
    user2 = lines[3]
    assert user2["created_at"] == conv["created_at"]  # null create_time: the conversation's
    assert [m["finish_reason"] for m in lines[1:]] == [None, "stop", None, "length"]
    assert [m["reply_to"] for m in lines[1:]] == [None, 1, None, 3]
    assert all(m["status"] == "complete" for m in lines[1:])


def test_chatgpt_tool_calls_pair_up_and_reasoning_is_counted(chatgpt_export: Any) -> None:
    lines = converted(chatgpt(chatgpt_export)[1])
    messages = lines[1:]
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    call = messages[1]
    assert call["content"] is None
    assert call["tool_calls"] == [
        {
            "id": "call_c1",
            "type": "function",
            "function": {"name": "python", "arguments": "import numpy as np\nprint(2*np.pi)"},
        }
    ]
    output = messages[2]
    assert (output["content"], output["tool_call_id"], output["name"]) == (
        "6.283185307179586",
        "call_c1",
        "python",
    )
    # The browsing call: its empty result is dropped (nothing the user saw), and the tool's
    # error answers it instead; the tool name is made valid for OpenAI.
    assert messages[3]["tool_calls"][0]["function"]["name"] == "web_run"
    error = messages[4]
    assert error["status"] == "error"
    assert error["content"] == "tool_error: Error: browsing is unavailable"
    assert error["error"] == {"message": "tool_error: Error: browsing is unavailable"}
    assert error["tool_call_id"] == messages[3]["tool_calls"][0]["id"]
    last = messages[5]
    assert last["status"] == "interrupted" and last["completed_at"] is None
    assert last["reply_to"] == 5
    conv = lines[0]
    assert conv["pinned"] is True  # is_starred
    assert "archived" not in conv["metadata"]
    assert conv["metadata"]["import_note"] == "not imported or changed: 2 reasoning step(s)"


def test_chatgpt_unconvertible_conversations_say_why(chatgpt_export: Any) -> None:
    out = chatgpt(chatgpt_export)
    reasons = {(s.source_id, s.title): s.reason for s in map(skipped, out[2:])}
    assert reasons == {
        ("6630a1b2-0003-8000-a000-000000000003", "Broken"): "it has no message tree (mapping)",
        ("6630a1b2-0004-8000-a000-000000000004", "Lost pointer"): (
            "its current_node names no message of its mapping: the branch shown is unknown"
        ),
        ("6630a1b2-0005-8000-a000-000000000005", None): "it has no messages the user could see",
        (None, None): "it is a string, not a conversation object",
    }


# -- ChatGPT: shapes, one at a time ----------------------------------------------------------------

T = 1714560000.0


def node(parent: str | None, message: Any) -> dict[str, Any]:
    return {"message": message, "parent": parent, "children": []}


def msg(role: Any, content: Any, **extra: Any) -> dict[str, Any]:
    return {"author": {"role": role}, "content": content, "create_time": T, **extra}


def text(*parts: Any) -> dict[str, Any]:
    return {"content_type": "text", "parts": list(parts)}


def chain(*messages: Any, **conversation: Any) -> dict[str, Any]:
    """A conversation whose mapping is one branch: n0 (root, no message), n1, n2, ..."""
    mapping = {"n0": node(None, None)}
    for i, message in enumerate(messages, start=1):
        mapping[f"n{i}"] = node(f"n{i - 1}", message)
    return {
        "id": "conv-1",
        "title": "t",
        "create_time": T,
        "update_time": T,
        "mapping": mapping,
        "current_node": f"n{len(messages)}",
        **conversation,
    }


def one_chatgpt(*messages: Any, **conversation: Any) -> list[dict[str, Any]] | Skipped:
    [out] = chatgpt([chain(*messages, **conversation)])
    return out


@pytest.mark.parametrize("data", [{}, {"conversations": []}, "x", 3, None, True])
def test_chatgpt_refuses_what_is_not_its_export(data: Any) -> None:
    with pytest.raises(InvalidArgument, match="not a ChatGPT export: expected a JSON list"):
        read_chatgpt(data)


def test_chatgpt_takes_one_conversation_object_as_a_list_of_one() -> None:
    [out] = chatgpt(chain(msg("user", text("hi"))))
    assert contents(converted(out)) == [("user", "hi")]


def test_chatgpt_conversation_id_wins_over_id() -> None:
    lines = converted(one_chatgpt(msg("user", text("hi")), conversation_id="c-2", id="c-1"))
    assert lines[0]["metadata"]["source_id"] == "c-2"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None}, "it has no conversation id (conversation_id or id)"),
        (
            {"id": "x" * (MAX_METADATA_VALUE + 1)},
            "it has no conversation id (conversation_id or id)",
        ),
        ({"mapping": {}}, "it has no message tree (mapping)"),
        ({"mapping": []}, "it has no message tree (mapping)"),
        ({"current_node": None}, "its current_node names no message of its mapping"),
    ],
)
def test_chatgpt_skips_a_conversation_without_what_it_needs(
    change: dict[str, Any], reason: str
) -> None:
    out = skipped(one_chatgpt(msg("user", text("hi")), **change))
    assert out.reason.startswith(reason)
    assert out.title == "t"


def test_chatgpt_skips_a_broken_tree() -> None:
    conv = chain(msg("user", text("a")), msg("assistant", text("b")))
    conv["mapping"]["n1"]["parent"] = "n2"  # n2 → n1 → n2 ...
    assert skipped(chatgpt([conv])[0]).reason == "its message tree has a cycle"
    conv = chain(msg("user", text("a")))
    conv["mapping"]["n1"]["parent"] = "gone"
    assert skipped(chatgpt([conv])[0]).reason == (
        'its message tree is broken: parent "gone" is not in the mapping'
    )
    conv = chain(msg("user", text("a")))
    conv["mapping"]["n1"]["parent"] = ["not", "an", "id"]
    assert skipped(chatgpt([conv])[0]).reason == (
        "its message tree is broken: parent ? is not in the mapping"
    )
    conv = chain(msg("user", text("a")))
    conv["mapping"]["n0"] = "root"
    assert skipped(chatgpt([conv])[0]).reason == (
        'its message tree is broken: node "n0" is not an object'
    )


def test_chatgpt_without_any_time_is_skipped_with_one_message_time_it_is_not() -> None:
    untimed = msg("user", text("hi"), create_time=None)
    out = skipped(one_chatgpt(untimed, create_time=None, update_time="yesterday"))
    assert out.reason == "it has no valid time, neither its own nor a message's"
    timed = msg("user", text("hi"), create_time=T + 5)
    lines = converted(one_chatgpt(timed, create_time=None, update_time=None))
    assert lines[0]["created_at"] == lines[0]["updated_at"] == _iso(T + 5)


def test_chatgpt_updated_at_is_never_before_a_message() -> None:
    lines = converted(one_chatgpt(msg("user", text("hi"), create_time=T + 99), update_time=T))
    assert lines[0]["updated_at"] == _iso(T + 99)


def test_chatgpt_long_title_is_shortened_and_said() -> None:
    lines = converted(one_chatgpt(msg("user", text("hi")), title="x" * 600))
    assert lines[0]["title"] == "x" * 512
    assert "1 title shortened to 512 characters" in lines[0]["metadata"]["import_note"]


def test_chatgpt_content_types_become_text() -> None:
    lines = converted(
        one_chatgpt(
            msg(
                "user",
                {
                    "content_type": "multimodal_text",
                    "parts": [
                        {
                            "content_type": "audio_transcription",
                            "text": "spoken words",
                            "direction": "in",
                        },
                        {"content_type": "audio_asset_pointer", "asset_pointer": "sediment://a"},
                        "typed words",
                    ],
                },
            ),
            msg("tool", {"content_type": "tether_browsing_display", "result": "", "summary": "s"}),
            msg(
                "tool", {"content_type": "tether_quote", "url": "u", "title": "q", "text": "quoted"}
            ),
            msg("assistant", {"content_type": "code", "language": "python", "text": "print(1)"}),
            msg("system", text("Be brief.")),
        )
    )
    assert contents(lines) == [
        ("user", "spoken words\ntyped words"),
        ("assistant", "print(1)"),  # code to no tool: shown as text
        ("system", "Be brief."),
    ]
    # Tool output with no call before it cannot be replayed: dropped and counted.
    note = lines[0]["metadata"]["import_note"]
    assert '1 message part(s) of type "audio_asset_pointer"' in note
    assert "2 tool result(s) without the call they answer" in note


def test_chatgpt_a_message_that_was_only_an_image_is_kept_empty() -> None:
    image = {"content_type": "image_asset_pointer", "asset_pointer": "file-service://f"}
    lines = converted(
        one_chatgpt(
            msg("user", {"content_type": "multimodal_text", "parts": [image]}),
            msg("assistant", text("A cat.")),
        )
    )
    assert contents(lines) == [("user", ""), ("assistant", "A cat.")]
    assert lines[0]["metadata"]["import_note"] == "not imported or changed: 1 image(s)"


def test_chatgpt_hidden_empty_and_context_messages_are_not_messages() -> None:
    lines = converted(
        one_chatgpt(
            msg("system", text(""), metadata={"is_visually_hidden_from_conversation": True}),
            msg("system", text("secret"), metadata={"is_visually_hidden_from_conversation": True}),
            msg("user", {"content_type": "model_editable_context", "model_set_context": "x"}),
            msg("user", text("")),
            msg("assistant", text(), metadata=None),
            msg("user", text("hi")),
        )
    )
    assert contents(lines) == [("user", "hi")]
    assert "import_note" not in lines[0]["metadata"]


def test_chatgpt_what_is_not_mapped_is_counted() -> None:
    lines = converted(
        one_chatgpt(
            "not a message",
            msg("critic", text("meh")),
            msg(None, text("anonymous")),
            msg("user", {"content_type": "app_pairing_content", "text": "x"}),
            msg("user", {"content_type": 7}),
            msg("user", {"content_type": "text"}),
            msg("user", {"content_type": "code", "text": ["not", "text"]}),
            msg("user", {"content_type": "system_error", "text": None}),
            msg("user", {"content_type": "system_error", "text": 3}),
            msg("user", {"content_type": "multimodal_text", "parts": [None, 5]}),
            msg("user", text("kept")),
        )
    )
    assert contents(lines) == [("user", ""), ("user", "kept")]  # system_error with no text
    note = lines[0]["metadata"]["import_note"]
    for lost in (
        "1 unreadable message(s)",
        '1 message(s) from "critic", a role chunkstore does not have',
        "1 message(s) from null, a role chunkstore does not have",
        '1 message(s) of type "app_pairing_content"',
        '1 message(s) of type "a number"',
        '1 message(s) of type "text" without parts',
        '1 message(s) of type "code" without text',
        '1 message(s) of type "system_error" without text',
        '1 message part(s) of type "null"',
        '1 message part(s) of type "a number"',
    ):
        assert lost in note


def test_chatgpt_system_error_without_a_name_and_failed_status() -> None:
    lines = converted(
        one_chatgpt(
            msg("user", {"content_type": "system_error", "text": "boom"}),
            msg("assistant", text("half"), status="failed"),
        )
    )
    assert [(m["content"], m["status"], m["error"]) for m in lines[1:]] == [
        ("boom", "error", {"message": "boom"}),
        ("half", "error", {"message": "half"}),
    ]


def test_chatgpt_tool_calls_that_do_not_pair_are_dropped_and_counted() -> None:
    call = msg("assistant", text("print(1)"), recipient="python", id="c")
    result = msg("tool", {"content_type": "execution_output", "text": "1"}, author={"role": "tool"})
    lines = converted(
        one_chatgpt(
            msg("user", text("go")),
            call,  # answered by nothing: the next message is another call
            {**call, "id": None},  # an id-less call gets one from its place
            result,
            msg("assistant", text("bio entry"), recipient="bio"),  # the last message, unanswered
        )
    )
    messages = lines[1:]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == "call_node3"
    assert messages[2]["name"] == "tool"  # a tool without a name
    assert (
        lines[0]["metadata"]["import_note"]
        == "not imported or changed: 2 tool call(s) without a result"
    )


def test_chatgpt_an_image_generated_by_a_tool_drops_the_call() -> None:
    call = msg(
        "assistant",
        {"content_type": "code", "text": '{"prompt": "a cat"}'},
        recipient="dalle.text2im",
    )
    image = {"content_type": "image_asset_pointer", "asset_pointer": "file-service://f"}
    result = msg(
        "tool",
        {"content_type": "multimodal_text", "parts": [image]},
        author={"role": "tool", "name": "dalle.text2im"},
    )
    lines = converted(
        one_chatgpt(
            msg("user", text("draw a cat")), call, result, msg("assistant", text("Here it is."))
        )
    )
    assert contents(lines) == [("user", "draw a cat"), ("assistant", "Here it is.")]
    assert lines[0]["metadata"]["import_note"] == (
        "not imported or changed: 1 image(s); 1 tool call(s) without a result"
    )


def test_chatgpt_call_ids_and_tool_names_are_made_valid() -> None:
    call = msg("assistant", text("q"), recipient="dalle.text2im", id="id with spaces/é")
    result = msg("tool", text("done"), author={"role": "tool", "name": "dalle.text2im" * 9})
    lines = converted(one_chatgpt(msg("user", text("draw")), call, result))
    tool_call = lines[2]["tool_calls"][0]
    assert tool_call["id"] == "call_id_with_spaces__"
    assert tool_call["function"]["name"] == "dalle_text2im"
    assert lines[3]["name"] == ("dalle_text2im" * 9)[:64]


# -- Open WebUI: the fixture export ----------------------------------------------------------------


@pytest.fixture
def openwebui_export() -> Any:
    return json.loads((DATA / "openwebui_chats.json").read_text(encoding="utf-8"))


def test_openwebui_every_chat_comes_out_converted_or_skipped(openwebui_export: Any) -> None:
    out = openwebui(openwebui_export)
    assert len(out) == len(openwebui_export) == 5
    assert [isinstance(item, Skipped) for item in out] == [False, False, False, True, True]


def test_openwebui_imports_the_branch_shown(openwebui_export: Any) -> None:
    lines = converted(openwebui(openwebui_export)[0])
    assert contents(lines) == [
        ("user", "Summarise this file"),
        ("assistant", "The file lists three tasks."),  # a2, the branch currentId is on
        ("user", "And the deadline?"),
        ("assistant", ""),
    ]
    conv = lines[0]
    assert conv["title"] == "Tasks file" and conv["pinned"] is True
    assert conv["created_at"] == "2024-05-01T10:40:00.000000Z"
    assert conv["updated_at"] == "2024-05-01T10:40:41.000000Z"
    assert conv["metadata"] == {
        "source": "openwebui",
        "source_id": "0b7e2f35-6b3c-4a53-9d7e-1f2a3b4c5d01",
        "model": "llama3.1:8b",
        "import_note": "not imported or changed: 1 attached file(s)",
    }
    assert lines[2]["usage"] == {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129}
    failed = lines[4]
    assert failed["status"] == "error"
    assert failed["error"] == {"content": "Ollama: 500, message='Internal Server Error'"}
    assert [m["reply_to"] for m in lines[1:]] == [None, 1, None, 3]


def test_openwebui_unfinished_reply_and_millisecond_times(openwebui_export: Any) -> None:
    lines = converted(openwebui(openwebui_export)[1])
    assert lines[0]["metadata"]["archived"] == "true"
    user, reply = lines[1:]
    assert user["created_at"] == "2024-05-01T10:41:40.000000Z"  # written in milliseconds
    assert reply["status"] == "interrupted" and reply["completed_at"] is None


def test_openwebui_bare_chat_with_a_messages_list(openwebui_export: Any) -> None:
    lines = converted(openwebui(openwebui_export)[2])
    assert lines[0]["title"] == "Old chat"
    assert lines[0]["metadata"]["source_id"] == "0b7e2f35-6b3c-4a53-9d7e-1f2a3b4c5d03"
    assert lines[0]["created_at"] == "2024-05-01T10:43:20.000000Z"  # chat.timestamp, in ms
    assert contents(lines) == [("user", "Hi"), ("assistant", "Hello! How can I help?")]


def test_openwebui_unconvertible_chats_say_why(openwebui_export: Any) -> None:
    out = openwebui(openwebui_export)
    assert skipped(out[3]) == Skipped(None, "No id", "it has no chat id")
    assert skipped(out[4]) == Skipped(
        "0b7e2f35-6b3c-4a53-9d7e-1f2a3b4c5d05",
        "Moved to chat_message",
        "it has no message history (chat.history.messages or chat.messages)",
    )


# -- Open WebUI: shapes, one at a time -------------------------------------------------------------

S = 1714560000


def history(*messages: dict[str, Any], current: Any = "m") -> dict[str, Any]:
    """A chat record whose history is one branch of ``messages`` (ids m1, m2, ...)."""
    by_id: dict[str, Any] = {}
    for i, message in enumerate(messages, start=1):
        by_id[f"m{i}"] = {**message, "id": f"m{i}", "parentId": f"m{i - 1}" if i > 1 else None}
    current_id = f"m{len(messages)}" if current == "m" else current
    return {
        "id": "chat-1",
        "title": "t",
        "created_at": S,
        "updated_at": S,
        "chat": {"history": {"messages": by_id, "currentId": current_id}},
    }


def one_openwebui(record: Any) -> list[dict[str, Any]] | Skipped:
    [out] = openwebui([record])
    return out


@pytest.mark.parametrize("data", [{}, {"chats": []}, "x", 3, None])
def test_openwebui_refuses_what_is_not_its_export(data: Any) -> None:
    with pytest.raises(
        InvalidArgument, match="not an Open WebUI chat export: expected a JSON list"
    ):
        read_openwebui(data)


def test_openwebui_takes_one_record_as_a_list_of_one() -> None:
    [out] = openwebui(history({"role": "user", "content": "hi", "timestamp": S}))
    assert contents(converted(out)) == [("user", "hi")]


def test_openwebui_content_parts_are_kept_and_bad_content_counted() -> None:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:"}}]
    lines = converted(
        one_openwebui(
            history(
                {"role": "user", "content": parts},
                {"role": "assistant", "content": {"not": "content"}},
                {"role": "tool", "content": "x"},
                {"role": "assistant", "content": None, "done": True},
                {"role": "assistant", "content": "ok", "usage": {"total_tokens": 3}},
            )
        )
    )
    assert contents(lines) == [("user", parts), ("assistant", "ok")]
    assert lines[2]["usage"] == {"total_tokens": 3}
    note = lines[0]["metadata"]["import_note"]
    assert "1 message(s) whose content is neither text nor content parts" in note
    assert '1 message(s) from "tool", a role chunkstore does not have' in note


def test_openwebui_broken_histories_are_skipped() -> None:
    record = history({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"})
    record["chat"]["history"]["messages"]["m1"]["parentId"] = "m2"
    assert skipped(one_openwebui(record)).reason == "its message history has a cycle"
    record["chat"]["history"]["messages"]["m1"]["parentId"] = "gone"
    assert skipped(one_openwebui(record)).reason == (
        'its message history is broken: parent "gone" is missing'
    )
    record = history({"role": "user", "content": "a"}, current="nowhere")
    assert skipped(one_openwebui(record)).reason == (
        "its history.currentId names none of its messages: the branch shown is unknown"
    )
    record["chat"]["messages"] = [{"role": "user", "content": "from the list"}]
    assert contents(converted(one_openwebui(record))) == [("user", "from the list")]
    assert skipped(one_openwebui({"id": "c", "chat": ["x"]})).reason == "its chat is not an object"
    assert skipped(one_openwebui(7)).reason == "it is a number, not a chat object"


def test_openwebui_a_message_that_is_not_an_object_is_counted() -> None:
    record = history({"role": "user", "content": "a", "timestamp": S})
    record["chat"]["history"]["messages"]["m0"] = "junk"
    record["chat"]["history"]["messages"]["m1"]["parentId"] = "m0"
    lines = converted(one_openwebui(record))
    assert contents(lines) == [("user", "a")]
    assert lines[0]["metadata"]["import_note"] == "not imported or changed: 1 unreadable message(s)"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (S, S),
        (S * 1000, S),
        (S * 1_000_000, S),
        (S * 1_000_000_000, S),
        (1.5, 1.5),
        (True, None),
        ("1714560000", None),
    ],
)
def test_openwebui_epoch_units_are_told_apart(value: Any, seconds: float | None) -> None:
    assert _epoch_seconds(value) == seconds


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 10**30, -(10**30), False, "1", None])
def test_what_is_not_a_time_is_none(value: Any) -> None:
    assert _iso(value) is None


def test_note_is_cut_to_the_metadata_limit() -> None:
    roles = [f"role-{i:03d}-{'x' * 20}" for i in range(40)]
    lines = converted(one_chatgpt(*(msg(r, text("x")) for r in roles), msg("user", text("hi"))))
    note = lines[0]["metadata"]["import_note"]
    assert len(note) == MAX_METADATA_VALUE and note.endswith("…")


def test_lone_surrogates_are_replaced_and_said() -> None:
    # What json.loads makes of an export cut inside an emoji ("\\ud83d" without its pair).
    broken = json.loads('"half an emoji: \\ud83d"')
    whole = json.loads('"an emoji: \\ud83d\\ude00"')
    lines = converted(one_chatgpt(msg("user", text(broken)), msg("assistant", text(whole))))
    assert contents(lines) == [("user", "half an emoji: \ufffd"), ("assistant", "an emoji: 😀")]
    assert lines[0]["metadata"]["import_note"] == (
        "not imported or changed: text with broken characters (lone UTF-16 surrogates), "
        "replaced by U+FFFD"
    )
    record = history(
        {"role": "user", "content": broken, "timestamp": S}, {"role": "user", "content": "x"}
    )
    lines = converted(one_openwebui(record))
    assert lines[0]["metadata"]["import_note"] == (
        "not imported or changed: 1 message time(s) missing, set to the conversation's; "
        "text with broken characters (lone UTF-16 surrogates), replaced by U+FFFD"
    )


def test_numbers_beyond_64_bits_are_kept_as_text() -> None:
    big = 2**64
    usage = {"total_tokens": big, "ok": [2**63 - 1, -(2**63)]}
    record = history({"role": "assistant", "content": "x", "timestamp": S, "usage": usage})
    lines = converted(one_openwebui(record))
    assert lines[1]["usage"] == {"total_tokens": str(big), "ok": [2**63 - 1, -(2**63)]}
    assert lines[0]["metadata"]["import_note"] == (
        "not imported or changed: numbers beyond 64 bits, kept as text"
    )


def test_a_value_nested_too_deep_to_store_skips_the_conversation() -> None:
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    record = history({"role": "assistant", "content": "x", "timestamp": S, "error": deep})
    assert skipped(one_openwebui(record)).reason.startswith("it cannot be stored as JSON: ")
    deeper: Any = "bottom"
    for _ in range(5000):
        deeper = {"e": deeper}
    record = history({"role": "assistant", "content": "x", "timestamp": S, "error": deeper})
    assert skipped(one_openwebui(record)).reason.startswith("it cannot be stored as JSON: ")


# -- properties: any JSON in ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.text(st.characters(categories=["Cs", "Ll"]), max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def mostly(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times in four: junk everywhere, but enough sense to get deep."""
    # ``one_of`` has no weights. Junk on the high draw: hypothesis leans to small integers,
    # and shrinks towards the valid side.
    return st.integers(0, 3).flatmap(lambda n: junk if n == 3 else valid)


times = st.none() | st.booleans() | st.floats() | st.integers(-(10**21), 10**21) | st.just(T)
node_ids = st.sampled_from(["n0", "n1", "n2", "n3", "n4"])
short_texts = st.text(max_size=6) | st.just("x" * 600)

chatgpt_content = mostly(
    st.fixed_dictionaries(
        {
            "content_type": st.sampled_from(["text", "multimodal_text"]),
            "parts": mostly(
                st.lists(
                    mostly(
                        st.text(min_size=1, max_size=6),
                        st.fixed_dictionaries(
                            {
                                "content_type": st.sampled_from(
                                    [
                                        "image_asset_pointer",
                                        "audio_transcription",
                                        "audio_asset_pointer",
                                    ]
                                )
                            },
                            optional={"text": st.text(max_size=4) | json_values},
                        )
                        | json_values,
                    ),
                    min_size=1,
                    max_size=3,
                ),
                json_values,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "content_type": st.sampled_from(
                [
                    "code",
                    "execution_output",
                    "tether_quote",
                    "tether_browsing_display",
                    "system_error",
                    "thoughts",
                    "reasoning_recap",
                    "user_editable_context",
                    "new",
                ]
            )
        },
        optional={
            "text": st.text(max_size=6) | json_values,
            "result": st.text(max_size=4) | json_values,
            "summary": st.text(max_size=4),
            "name": st.text(max_size=4) | st.none(),
        },
    )
    | json_values,
)
chatgpt_message = mostly(
    st.fixed_dictionaries(
        {
            "author": mostly(
                st.fixed_dictionaries(
                    {
                        "role": mostly(
                            st.sampled_from(["user", "assistant", "system", "tool"]), json_values
                        )
                    },
                    optional={
                        "name": st.sampled_from(["python", "web.run", "", "a" * 300]) | json_values
                    },
                ),
                json_values,
            ),
            "content": chatgpt_content,
        },
        optional={
            "id": node_ids | st.text(max_size=300) | json_values,
            "create_time": times,
            "update_time": times,
            "status": st.sampled_from(["finished_successfully", "in_progress", "failed"])
            | json_values,
            "recipient": st.sampled_from(["all", "python", "web.run", ""]) | json_values,
            "metadata": st.fixed_dictionaries(
                {},
                optional={
                    "is_visually_hidden_from_conversation": st.booleans() | json_values,
                    "finish_details": st.fixed_dictionaries(
                        {
                            "type": st.sampled_from(["stop", "max_tokens", "interrupted"])
                            | json_values
                        }
                    )
                    | json_values,
                    "attachments": st.lists(json_values, max_size=2) | json_values,
                },
            )
            | json_values,
        },
    ),
    st.none() | json_values,
)
chatgpt_node = (
    st.fixed_dictionaries(
        {"message": chatgpt_message, "parent": st.none() | node_ids | json_values}
    )
    | json_values
)
chatgpt_random_tree = st.fixed_dictionaries(
    {
        "mapping": st.dictionaries(node_ids, chatgpt_node, max_size=5) | json_values,
        "current_node": node_ids | json_values,
    },
    optional={
        "id": st.text(max_size=6) | st.just("i" * 600) | json_values,
        "conversation_id": st.text(max_size=6) | json_values,
        "title": short_texts | json_values,
        "create_time": times,
        "update_time": times,
        "default_model_slug": st.text(max_size=6) | st.just("m" * 600) | json_values,
        "is_archived": st.booleans() | json_values,
        "is_starred": st.booleans() | st.none(),
    },
)
chatgpt_conversation = mostly(
    st.lists(chatgpt_message, min_size=1, max_size=6).map(lambda ms: chain(*ms)),
    chatgpt_random_tree | json_values,
)

openwebui_message = mostly(
    st.fixed_dictionaries(
        {
            "role": mostly(st.sampled_from(["user", "assistant", "system", "tool"]), json_values),
            "parentId": st.none() | node_ids | json_values,
        },
        optional={
            "content": mostly(
                st.text(min_size=1, max_size=6)
                | st.lists(
                    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=4)}),
                    max_size=2,
                ),
                json_values,
            ),
            "timestamp": times,
            "done": st.booleans() | json_values,
            "error": json_values,
            "files": st.lists(json_values, max_size=2) | json_values,
            "usage": json_values,
            "info": st.fixed_dictionaries({"usage": json_values}) | json_values,
        },
    ),
    json_values,
)
openwebui_chat = st.fixed_dictionaries(
    {},
    optional={
        "history": st.fixed_dictionaries(
            {
                "messages": st.dictionaries(node_ids, openwebui_message, max_size=5) | json_values,
                "currentId": node_ids | json_values,
            }
        )
        | json_values,
        "messages": st.lists(openwebui_message, max_size=3) | json_values,
        "models": st.lists(st.text(max_size=4) | st.just("m" * 600), max_size=2) | json_values,
        "title": short_texts | json_values,
        "id": st.text(max_size=6) | json_values,
        "timestamp": times,
    },
)
openwebui_record = st.fixed_dictionaries(
    {"chat": openwebui_chat | json_values},
    optional={
        "id": st.text(max_size=6) | json_values,
        "title": short_texts | json_values,
        "created_at": times,
        "updated_at": times,
        "pinned": st.booleans() | json_values,
        "archived": st.booleans() | json_values,
    },
)
openwebui_item = mostly(
    st.lists(openwebui_message, min_size=1, max_size=5).map(
        lambda ms: history(*(m if isinstance(m, dict) else {"junk": m} for m in ms))
    ),
    openwebui_record | openwebui_chat | json_values,
)

property_settings = settings(max_examples=EXAMPLES, deadline=None)


def expect_count(reader: Any, data: Any, source: str, single: bool) -> None:
    """Any JSON: a wrong top-level shape is InvalidArgument; otherwise one result per
    conversation in, each converted valid lines or Skipped with a reason."""
    if isinstance(data, list):
        assert len(convert(reader, data, source)) == len(data)
    elif single:
        assert len(convert(reader, data, source)) == 1
    else:
        with pytest.raises(InvalidArgument):
            reader(data)


@property_settings
@given(json_values)
def test_chatgpt_any_json(data: Any) -> None:
    expect_count(read_chatgpt, data, "chatgpt", isinstance(data, dict) and "mapping" in data)


@property_settings
@given(st.lists(chatgpt_conversation, max_size=4) | chatgpt_conversation)
def test_chatgpt_any_export_like_json(data: Any) -> None:
    expect_count(read_chatgpt, data, "chatgpt", isinstance(data, dict) and "mapping" in data)


@property_settings
@given(json_values)
def test_openwebui_any_json(data: Any) -> None:
    single = isinstance(data, dict) and ("chat" in data or "history" in data)
    expect_count(read_openwebui, data, "openwebui", single)


@property_settings
@given(st.lists(openwebui_item, max_size=4) | openwebui_item)
def test_openwebui_any_export_like_json(data: Any) -> None:
    single = isinstance(data, dict) and ("chat" in data or "history" in data)
    expect_count(read_openwebui, data, "openwebui", single)
