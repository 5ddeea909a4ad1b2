"""``GET /openapi.json``: an OpenAPI 3.1 document describing every endpoint of the edge.

The response schemas are the contract the tests hold real responses to (``test_openapi.py``
validates them with ``jsonschema``), so the edge's own objects are closed
(``additionalProperties: false``): a field added to a response without being documented here
fails a test. Objects relayed from the upstream (chat completions, upstream errors) stay open.

The document is built once per process (``functools.cache``); treat it as read-only.
"""

from __future__ import annotations

import functools
from typing import Any

from chunkstore import __version__
from chunkstore._search import MAX_QUERY_CHARS
from edge.page import openapi_paths as page_openapi_paths

__all__ = ["openapi_document"]

_SCHEMAS = "#/components/schemas/"
_PARAMS = "#/components/parameters/"
_RESPONSES = "#/components/responses/"
_HISTORY_PREFIXES = (("/v1/conversations", ""), ("/api/conversations", "Alias"))
_RELAY_METHODS = ("get", "post", "put", "patch", "delete")


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": kind + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (OpenAPI 3.1 spells nullability as a JSON Schema type union)."""
    return {"anyOf": [schema, {"type": "null"}]}


def _closed(properties: dict[str, Any], description: str) -> dict[str, Any]:
    """An object with exactly these properties, all required."""
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# -- components ---------------------------------------------------------------------------------

_METADATA = {
    "type": "object",
    "description": "Up to 16 string pairs: keys of at most 64 characters, values of at most 512.",
    "maxProperties": 16,
    "propertyNames": {"type": "string", "maxLength": 64},
    "additionalProperties": {"type": "string", "maxLength": 512},
}
_TITLE = {"type": ["string", "null"], "maxLength": 512}
_UNIX_TIME = {"type": "integer", "description": "Unix time in seconds."}
_REPLY_TO = {
    "type": ["integer", "null"],
    "minimum": 1,
    "description": "A reply's: the seq of the message it answers (the last user or tool "
    "message of its turn). Turns sent at once are stored user, user, assistant, assistant; "
    "this pairs each reply with its question. null when unknown.",
}
_MESSAGE_ID = {
    "type": "string",
    "pattern": "^us[0-9]{2,18}-co[0-9]{2,18}-ms[0-9]{2,18}$",
    "maxLength": 64,
    "examples": ["us01-co01-ms02"],
}
_EVENT_STREAM = {
    # OpenAPI 3.1 tools apply this schema to each server-sent event.
    "schema": {
        "type": "object",
        "properties": {
            "data": {"type": "string"},
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
        "required": ["data"],
    }
}
_CONVERSATION_ID = {
    "type": "string",
    "pattern": "^us(0[1-9]|[1-9][0-9]{1,17})-co(0[1-9]|[1-9][0-9]{1,17})$",
    "maxLength": 64,
    "examples": ["us01-co01"],
}


def _conversation_properties() -> dict[str, Any]:
    return {
        "id": _CONVERSATION_ID,
        "object": {"const": "conversation"},
        "title": _TITLE,
        "created_at": _UNIX_TIME,
        "updated_at": _UNIX_TIME,
        "metadata": _METADATA,
        "pinned": {"type": "boolean", "description": "Pinned conversations outlive retention."},
        "deleted_at": {
            "type": ["integer", "null"],
            "description": "Unix time of the soft delete; null unless deleted.",
        },
        "damaged": {
            "type": "boolean",
            "description": "Its stored metadata was unreadable: title, metadata and pinned are "
            "lost, times come from its messages (which stay readable).",
        },
    }


def _schemas() -> dict[str, Any]:
    error = {
        "type": "object",
        "description": "Every error the edge returns (upstream errors are relayed as given).",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                "required": ["message", "type"],
            }
        },
        "required": ["error"],
    }
    tool_call = {
        "type": "object",
        "properties": {
            "id": {"type": ["string", "null"]},
            "type": {"type": "string"},
            "function": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
            },
        },
    }
    message = _closed(
        {
            "id": {"type": "string", "examples": ["us01-co01-ms01"]},
            "object": {"const": "conversation.message"},
            "seq": {
                "type": "integer",
                "minimum": 1,
                "description": "Position in the conversation.",
            },
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {
                "description": "Text, a list of content parts, or null (tool calls only).",
                "type": ["string", "array", "null"],
                "items": {"type": "object"},
            },
            "name": {"type": ["string", "null"]},
            "agent_id": {
                "type": ["string", "null"],
                "description": "Who wrote an assistant message: X-Agent-ID, else the model.",
            },
            "status": {
                "enum": ["complete", "error", "streaming", "interrupted"],
                "description": "streaming: still being written (content so far); interrupted: "
                "its writer died; error: the stream failed or the client went away.",
            },
            "finish_reason": {"type": ["string", "null"]},
            "tool_calls": _nullable({"type": "array", "items": _ref(_SCHEMAS, "ToolCall")}),
            "tool_call_id": {"type": ["string", "null"]},
            "usage": {"type": ["object", "null"]},
            "created_at": _UNIX_TIME,
            "damaged": {
                "type": "boolean",
                "description": "Some of the message's files were unreadable: content is partial.",
            },
            "reply_to": _REPLY_TO,
            "resume_url": {
                "type": ["string", "null"],
                "description": "A reply still streaming (status streaming): the URL that "
                "follows it from the end of the content above, on any edge instance; null "
                "otherwise.",
            },
            "status_reason": {
                "type": ["string", "null"],
                "description": "Why a message ended with status error: cancelled (stopped "
                "with POST .../cancel), client_disconnected, upstream_error, shutdown, ...; "
                "null otherwise.",
            },
        },
        "A stored message, rebuilt from its chunk files.",
    )
    message_list = _closed(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref(_SCHEMAS, "Message")},
            "first_seq": {"type": ["integer", "null"]},
            "last_seq": {
                "type": ["integer", "null"],
                "description": "Pass as after_seq for the next page; null on an empty page.",
            },
            "has_more": {"type": "boolean"},
        },
        "A page of messages in seq order.",
    )
    items = _item_schemas()
    detail_properties = _conversation_properties()
    detail_properties["messages"] = _ref(_SCHEMAS, "MessageList")
    fields = {"title": _TITLE, "metadata": _nullable(_METADATA), "pinned": {"type": "boolean"}}
    create_fields = {
        **fields,
        "items": {
            **_nullable({"type": "array", "maxItems": 20, "items": _ref(_SCHEMAS, "InputItem")}),
            "description": "OpenAI's initial items (up to 20), stored as its first messages. "
            "Without a title, the first user message's text names the conversation.",
        },
    }
    return {
        "Error": error,
        "Conversation": _closed(_conversation_properties(), "A conversation's metadata."),
        "ConversationMatch": _closed(
            {
                **_conversation_properties(),
                "match": _closed(
                    {
                        "snippet": {
                            "type": "string",
                            "description": "About 160 characters of the matching text around "
                            "its first match, on one line, with … where text was cut.",
                        },
                        "seq": {
                            "type": ["integer", "null"],
                            "minimum": 1,
                            "description": "The matching message's seq (its latest "
                            "matching message when several match); null when the title "
                            "matched.",
                        },
                        "message_id": {
                            **_nullable(_MESSAGE_ID),
                            "description": "The matching message's id; null for the title.",
                        },
                    },
                    "Where the search matched.",
                ),
            },
            "A conversation found by a search (q): its metadata and where it matched.",
        ),
        "ConversationDetail": _closed(
            detail_properties, "A conversation with the first page of its messages."
        ),
        "ConversationList": _closed(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            _ref(_SCHEMAS, "Conversation"),
                            _ref(_SCHEMAS, "ConversationMatch"),
                        ]
                    },
                    "description": "Conversation objects; with q, ConversationMatch objects.",
                },
                "first_id": _nullable(_CONVERSATION_ID),
                "last_id": {
                    **_nullable(_CONVERSATION_ID),
                    "description": "Pass as after for the next page; null on an empty page.",
                },
                "has_more": {"type": "boolean"},
            },
            "A page of conversations, newest first; with q, title matches newest first, "
            "then message matches newest first.",
        ),
        "ConversationCreate": {
            "type": "object",
            "properties": create_fields,
            "additionalProperties": False,
        },
        **items,
        "ConversationUpdate": {
            "type": "object",
            "properties": fields,
            "additionalProperties": False,
            "minProperties": 1,
            "description": "metadata replaces the stored metadata whole.",
        },
        "Message": message,
        "MessageList": message_list,
        "ToolCall": tool_call,
        "Deleted": _closed(
            {
                "id": _CONVERSATION_ID,
                "object": {"const": "conversation.deleted"},
                "deleted": {"const": True},
            },
            "The answer to a delete, soft or hard.",
        ),
        "Health": {
            "type": "object",
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "checks": {
                    "type": "object",
                    "properties": {
                        "persistence": {"type": "boolean"},
                        "upstream": {"enum": ["demo", "configured"]},
                        "upstream_reachable": {"type": "boolean"},
                        "store_writable": {"type": "boolean"},
                    },
                    "required": ["persistence", "upstream", "upstream_reachable"],
                },
            },
            "required": ["status", "checks"],
        },
        "ChatMessage": {
            "type": "object",
            "properties": {
                "role": {"type": "string", "minLength": 1, "maxLength": 256},
                "content": {"type": ["string", "array", "null"], "items": {"type": "object"}},
                "name": {"type": "string", "minLength": 1, "maxLength": 256},
                "tool_calls": {"type": "array", "items": _ref(_SCHEMAS, "ToolCall")},
                "tool_call_id": {"type": "string", "minLength": 1, "maxLength": 256},
            },
            "required": ["role"],
        },
        "ChatCompletionRequest": {
            "type": "object",
            "description": "OpenAI's chat completion request; other fields are relayed as is.",
            "properties": {
                "model": {"type": "string"},
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": _ref(_SCHEMAS, "ChatMessage"),
                },
                "stream": {"type": "boolean"},
                "stream_options": {
                    "type": "object",
                    "properties": {"include_usage": {"type": "boolean"}},
                },
                "conversation_id": {
                    **_CONVERSATION_ID,
                    "description": "Edge extension, same as X-Conversation-ID; never forwarded.",
                },
            },
            "required": ["messages"],
        },
        "ChatCompletion": {
            "type": "object",
            "description": "OpenAI's chat.completion object, as the upstream sent it.",
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object"}},
                "usage": {"type": ["object", "null"]},
                "metadata": {
                    "type": "object",
                    "description": "{storage_failed: true} when the reply could not be stored.",
                },
            },
            "required": ["choices"],
        },
    }


_ITEM_ID = {
    "type": "string",
    "pattern": "^(msg_|fco_|fc_)us[0-9]{2,18}-co[0-9]{2,18}-ms[0-9]{2,18}(_[1-9][0-9]{0,3})?$",
    "description": "msg_<message id>: a message's text; fc_<message id>_<n>: its n-th tool "
    "call; fco_<message id>: a tool result. Any other spelling is a 404.",
    "examples": ["msg_us01-co01-ms01", "fc_us01-co01-ms02_1", "fco_us01-co01-ms03"],
}
_ITEM_STATUS = {
    "enum": ["completed", "in_progress", "incomplete"],
    "description": "in_progress: still streaming; incomplete: it failed or was interrupted.",
}
_ITEM_SEQ = {"type": "integer", "minimum": 1, "description": "Its message's seq (ours)."}


def _item_schemas() -> dict[str, Any]:
    """OpenAI's conversation items, as the edge serves stored messages (``edge.conversations``)."""

    def part(kind: str, properties: dict[str, Any]) -> dict[str, Any]:
        return _closed({"type": {"const": kind}, **properties}, f"A {kind} content part.")

    extra = {
        "seq": _ITEM_SEQ,
        "reply_to": _REPLY_TO,
        "status": _ITEM_STATUS,
    }
    message = _closed(
        {
            "id": _ITEM_ID,
            "type": {"const": "message"},
            "role": {"enum": ["user", "assistant", "system", "developer"]},
            "content": {"type": "array", "items": _ref(_SCHEMAS, "ContentPart")},
            **extra,
        },
        "A stored message's text (and images): input_text parts, output_text for the assistant.",
    )
    function_call = _closed(
        {
            "id": _ITEM_ID,
            "type": {"const": "function_call"},
            "call_id": {"type": "string"},
            "name": {"type": "string"},
            "arguments": {"type": "string"},
            **extra,
        },
        "One tool call of a stored assistant message.",
    )
    function_call_output = _closed(
        {
            "id": _ITEM_ID,
            "type": {"const": "function_call_output"},
            "call_id": {"type": "string"},
            "output": {"type": "string"},
            **extra,
        },
        "A stored tool message (a tool's result).",
    )
    return {
        "ContentPart": {
            "oneOf": [
                part("input_text", {"text": {"type": "string"}}),
                part(
                    "output_text",
                    {
                        "text": {"type": "string"},
                        "annotations": {"type": "array", "maxItems": 0},
                    },
                ),
                part("refusal", {"refusal": {"type": "string"}}),
                part(
                    "input_image",
                    {"image_url": {"type": ["string", "null"]}, "detail": {"type": "string"}},
                ),
            ]
        },
        "Item": {"oneOf": [message, function_call, function_call_output]},
        "ItemList": _closed(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref(_SCHEMAS, "Item")},
                "first_id": _nullable(_ITEM_ID),
                "last_id": {
                    **_nullable(_ITEM_ID),
                    "description": "Pass as after for the next page; null on an empty page.",
                },
                "has_more": {"type": "boolean"},
            },
            "A page of items (or the items just created).",
        ),
        "InputItem": {
            "type": "object",
            "description": "An OpenAI input item: a message (type message, or just role and "
            "content: text or input_text / output_text / refusal / input_image parts), a "
            "function_call (call_id, name, arguments) or a function_call_output (call_id, "
            "output). Other item types are a 400.",
            "properties": {
                "type": {"enum": ["message", "function_call", "function_call_output"]},
                "role": {"enum": ["user", "assistant", "system", "developer"]},
                "content": {"type": ["string", "array"], "items": {"type": "object"}},
                "call_id": {"type": "string"},
                "name": {"type": "string"},
                "arguments": {"type": "string"},
                "output": {"type": ["string", "array"], "items": {"type": "object"}},
            },
        },
        "ItemsCreate": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 20,
                    "items": _ref(_SCHEMAS, "InputItem"),
                }
            },
            "required": ["items"],
            "additionalProperties": False,
        },
    }


def _parameters() -> dict[str, Any]:
    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": schema, "description": description}

    return {
        "ConversationId": {
            "name": "conversation_id",
            "in": "path",
            "required": True,
            "schema": _CONVERSATION_ID,
            "description": "Malformed: 400. Unknown or another session's: 404 (the same 404).",
        },
        "Limit": query(
            "limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "Page size."
        ),
        "After": query("after", _CONVERSATION_ID, "Cursor: the last_id of the previous page."),
        "Query": query(
            "q",
            {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
            "Search instead of listing: the conversations whose title or one finished message "
            "holds every word of q as the start of a word ('lis bon' finds \"Lisbon's "
            'bonfires"; case and width folded, accents kept): the conversations whose title '
            "matches, newest first, then those where only a message matches, newest first "
            "(recency, not relevance: the same order on every backend), each with its match "
            "(a message match: the latest matching message). Nothing "
            "in q is syntax; q without words (letters or digits) is a 400. A reply is found "
            "once it has finished streaming.",
        ),
        "Offset": query(
            "offset",
            {"type": "integer", "minimum": 0, "maximum": 1_000_000},
            "Skip this many conversations (instead of after).",
        ),
        "IncludeDeleted": query(
            "include_deleted",
            {"enum": ["1", "true", "0", "false"]},
            "List soft-deleted conversations too.",
        ),
        "AfterSeq": query(
            "after_seq",
            {"type": "integer", "minimum": 0, "maximum": 10**18 - 1, "default": 0},
            "Messages with a larger seq: the last_seq of the previous page.",
        ),
        "MessageId": {
            "name": "message_id",
            "in": "path",
            "required": True,
            "schema": _MESSAGE_ID,
            "description": "A message of this conversation. Malformed: 400; another "
            "conversation's or unknown: 404.",
        },
        "ResumeAfter": query(
            "after",
            {"type": "string", "pattern": "^(us[0-9]{2,18}-co[0-9]{2,18}-ms[0-9]{2,18}:)?[0-9]+$"},
            "Where to resume: the SSE id of the last event received (<message id>:<offset>) "
            "or an offset into the content; Last-Event-ID wins. Neither: from the start.",
        ),
        "LastEventId": {
            "name": "Last-Event-ID",
            "in": "header",
            "schema": {"type": "string"},
            "description": "The SSE id of the last event received (what EventSource sends "
            "when it reconnects): <message id>:<offset>.",
        },
        "BackgroundHeader": {
            "name": "X-Background-Generation",
            "in": "header",
            "schema": {"enum": ["true", "1", "yes", "on", "false", "0", "no", "off"]},
            "description": "With BACKGROUND_GENERATION on: true finishes and stores the "
            "reply even if the client disconnects (at most BACKGROUND_MAX_S longer), so a "
            "resumed stream gets all of it. Never forwarded.",
        },
        "ItemId": {
            "name": "item_id",
            "in": "path",
            "required": True,
            "schema": _ITEM_ID,
            "description": "Malformed, another conversation's, or deleted: 404.",
        },
        "AfterItem": query(
            "after", _ITEM_ID, "Cursor: the last_id of the previous page (in the same order)."
        ),
        "Order": query(
            "order",
            {"enum": ["asc", "desc"], "default": "desc"},
            "Oldest first (asc) or newest first (desc, OpenAI's default).",
        ),
        "Include": {
            "name": "include",
            "in": "query",
            "schema": {
                "type": "array",
                "items": {
                    "enum": [
                        "file_search_call.results",
                        "web_search_call.results",
                        "web_search_call.action.sources",
                        "message.input_image.image_url",
                        "computer_call_output.output.image_url",
                        "code_interpreter_call.outputs",
                        "reasoning.encrypted_content",
                        "message.output_text.logprobs",
                    ]
                },
            },
            "description": "OpenAI's include values (also as include[]): accepted, and "
            "nothing is added (none of what they name is stored).",
        },
        "IncludeDeletedItem": query(
            "include_deleted",
            {"enum": ["1", "true", "0", "false"]},
            "Reach a soft-deleted conversation (otherwise 404, as OpenAI's deleted ones).",
        ),
        "Hard": query(
            "hard",
            {"enum": ["1", "true", "0", "false"]},
            "Remove for good instead of a soft delete.",
        ),
        "SessionHeader": {
            "name": "x-session-id",
            "in": "header",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~+/=:@-]{1,256}$"},
            "description": "The session whose history the request sees; wins over the cookie.",
        },
        "SessionCookie": {
            "name": "cf_session_id",
            "in": "cookie",
            "schema": {"type": "string"},
            "description": "The session, when no x-session-id header is sent. Issued "
            "(HttpOnly, SameSite=Lax) to a new session that uses history.",
        },
        "ConversationHeader": {
            "name": "X-Conversation-ID",
            "in": "header",
            "schema": _CONVERSATION_ID,
            "description": "Continue this conversation: its history is prepended upstream.",
        },
        "AgentHeader": {
            "name": "X-Agent-ID",
            "in": "header",
            "schema": {"type": "string", "maxLength": 256},
            "description": "Stored as the reply's agent_id (default: the model).",
        },
    }


def _responses() -> dict[str, Any]:
    error = _ref(_SCHEMAS, "Error")
    return {
        "BadRequest": _json(error, "Malformed id, body or query value."),
        "Unauthorized": _json(error, "EDGE_API_KEYS is set and no valid bearer key was sent."),
        "NotFound": _json(error, "No such conversation for this session."),
        "NotImplemented": _json(error, "Persistence is off (PERSIST_TRANSCRIPTS=false)."),
        "Unprocessable": _json(error, "A limit was reached, or the conversation is deleted."),
        "Conflict": _json(error, "The message is still streaming: delete it once it ends."),
        "StorageError": _json(error, "The store is unavailable."),
        "Error": _json(error, "An OpenAI-shaped error."),
    }


# -- paths --------------------------------------------------------------------------------------


def _errors(*statuses: str) -> dict[str, Any]:
    names = {
        "400": "BadRequest",
        "401": "Unauthorized",
        "404": "NotFound",
        "409": "Conflict",
        "422": "Unprocessable",
        "501": "NotImplemented",
        "503": "StorageError",
    }
    out = {status: _ref(_RESPONSES, names[status]) for status in ("401", *statuses)}
    out["default"] = _ref(_RESPONSES, "Error")
    return out


def _session_parameters() -> list[dict[str, str]]:
    return [_ref(_PARAMS, "SessionHeader"), _ref(_PARAMS, "SessionCookie")]


def _history_paths(prefix: str, suffix: str) -> dict[str, Any]:
    tag = ["conversations"]
    session = _session_parameters()
    item = [_ref(_PARAMS, "ConversationId"), *session]
    conversation = _json(_ref(_SCHEMAS, "Conversation"), "The conversation.")
    update = {
        "tags": tag,
        "summary": "Change title, pinned and/or metadata",
        "parameters": [_ref(_PARAMS, "IncludeDeletedItem")],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref(_SCHEMAS, "ConversationUpdate")}},
        },
        "responses": {"200": conversation, **_errors("400", "404", "501", "503")},
    }

    def op(name: str) -> str:
        return name + suffix

    return {
        prefix: {
            "parameters": session,
            "post": {
                "operationId": op("createConversation"),
                "tags": tag,
                "summary": "Create a conversation (and the session's user on first use), "
                "with up to 20 initial items",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": _ref(_SCHEMAS, "ConversationCreate")}
                    },
                },
                "responses": {
                    "201": _json(_ref(_SCHEMAS, "Conversation"), "Created."),
                    **_errors("400", "422", "501", "503"),
                },
            },
            "get": {
                "operationId": op("listConversations"),
                "tags": tag,
                "summary": "List the session's conversations, newest first, or search them (q)",
                "parameters": [
                    _ref(_PARAMS, "Query"),
                    _ref(_PARAMS, "Limit"),
                    _ref(_PARAMS, "After"),
                    _ref(_PARAMS, "Offset"),
                    _ref(_PARAMS, "IncludeDeleted"),
                ],
                "responses": {
                    "200": _json(_ref(_SCHEMAS, "ConversationList"), "A page."),
                    **_errors("400", "501", "503"),
                },
            },
        },
        f"{prefix}/export": {
            "parameters": session,
            "get": {
                "operationId": op("exportConversations"),
                "tags": tag,
                "summary": "Download the session's data: every conversation and message",
                "description": "The chunkstore export format (JSON Lines, version 1): a header "
                'line ({"type": "export", "format": "chunkstore-export", "version": 1, ...}), '
                "the session's user line (its sessions left out: the server's, not the user's "
                "data), then each "
                "conversation (soft-deleted ones included) and one line per message in seq "
                'order; a deleted message is {..., "deleted": true}. Streamed; saved as a '
                "file (Content-Disposition: attachment) that `chunkstore import` reads back. "
                "A session the store has never seen gets the header line alone.",
                "responses": {
                    "200": {
                        "description": "The export, one JSON object per line.",
                        "headers": {
                            "Content-Disposition": {
                                "description": 'attachment; filename="chunkstore-export-'
                                '<user>-<YYYYMMDD>.jsonl"',
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            "application/x-ndjson": {
                                "schema": {"type": "string", "description": "JSON Lines"}
                            }
                        },
                    },
                    **_errors("501", "503"),
                },
            },
        },
        f"{prefix}/{{conversation_id}}": {
            "parameters": item,
            "get": {
                "operationId": op("getConversation"),
                "tags": tag,
                "summary": "A conversation and the first page (20) of its messages",
                "description": "OpenAI's retrieve. A soft-deleted conversation is a 404 "
                "unless include_deleted is set.",
                "parameters": [_ref(_PARAMS, "IncludeDeletedItem")],
                "responses": {
                    "200": _json(_ref(_SCHEMAS, "ConversationDetail"), "The conversation."),
                    **_errors("400", "404", "501", "503"),
                },
            },
            "patch": {**update, "operationId": op("updateConversation")},
            "post": {
                **update,
                "operationId": op("updateConversationPost"),
                "description": "Same as PATCH (OpenAI clients update with POST).",
            },
            "delete": {
                "operationId": op("deleteConversation"),
                "tags": tag,
                "summary": "Soft delete (restorable), or remove for good with hard=true",
                "parameters": [_ref(_PARAMS, "Hard")],
                "responses": {
                    "200": _json(_ref(_SCHEMAS, "Deleted"), "Deleted."),
                    **_errors("400", "404", "501", "503"),
                },
            },
        },
        f"{prefix}/{{conversation_id}}/messages": {
            "parameters": item,
            "get": {
                "operationId": op("listMessages"),
                "tags": tag,
                "summary": "Rebuilt messages in seq order; streaming ones show their text so far",
                "parameters": [_ref(_PARAMS, "AfterSeq"), _ref(_PARAMS, "Limit")],
                "responses": {
                    "200": _json(_ref(_SCHEMAS, "MessageList"), "A page."),
                    **_errors("400", "404", "501", "503"),
                },
            },
        },
        f"{prefix}/{{conversation_id}}/messages/{{message_id}}/stream": {
            "parameters": [*item[:1], _ref(_PARAMS, "MessageId"), *item[1:]],
            "get": {
                "operationId": op("resumeMessageStream"),
                "tags": tag,
                "summary": "Resume a reply's stream after the last event received",
                "description": "Replays from the store what followed the position "
                "(Last-Event-ID or after), then follows the live reply to its end, as "
                "chat.completion.chunk events with the same ids, and data: [DONE]. Its last "
                "events are the stored end: tool calls (whole), finish reason, usage, and a "
                "chunk with choices [] and metadata {status, message_id, reason}: complete, "
                "error (reason: cancelled, client_disconnected, ...) or interrupted (its "
                "producer died; the durable prefix was all there was). Works on any instance "
                "of the store; a reply that ended replays and ends at once.",
                "parameters": [_ref(_PARAMS, "ResumeAfter"), _ref(_PARAMS, "LastEventId")],
                "responses": {
                    "200": {
                        "description": "An SSE stream of chat.completion.chunk events.",
                        "headers": {
                            "X-Conversation-ID": {"schema": _CONVERSATION_ID},
                            "X-Message-ID": {"schema": _MESSAGE_ID},
                        },
                        "content": {"text/event-stream": _EVENT_STREAM},
                    },
                    **_errors("400", "404", "501", "503"),
                },
            },
        },
        f"{prefix}/{{conversation_id}}/messages/{{message_id}}/cancel": {
            "parameters": [*item[:1], _ref(_PARAMS, "MessageId"), *item[1:]],
            "post": {
                "operationId": op("cancelMessage"),
                "tags": tag,
                "summary": "Stop a running reply on purpose",
                "description": "Cuts its upstream and stores it as error with its partial "
                "text and status_reason cancelled, on whichever instance produces it; answers "
                "once it is stored (at most 10 s) with the message. A reply that is not "
                "running is returned as it is.",
                "responses": {
                    "200": _json(_ref(_SCHEMAS, "Message"), "The message, as stored."),
                    **_errors("400", "404", "501", "503"),
                },
            },
        },
        f"{prefix}/{{conversation_id}}/items": {
            "parameters": item,
            "get": {
                "operationId": op("listItems"),
                "tags": tag,
                "summary": "OpenAI's items of the conversation, newest first by default",
                "description": "Messages stored by chat completions and items added here are "
                "one history. A soft-deleted conversation is a 404.",
                "parameters": [
                    _ref(_PARAMS, "AfterItem"),
                    _ref(_PARAMS, "Limit"),
                    _ref(_PARAMS, "Order"),
                    _ref(_PARAMS, "Include"),
                ],
                "responses": {
                    "200": _json(_ref(_SCHEMAS, "ItemList"), "A page."),
                    **_errors("400", "404", "501", "503"),
                },
            },
            "post": {
                "operationId": op("createItems"),
                "tags": tag,
                "summary": "Add up to 20 items without calling the model",
                "description": "All are validated before any is stored; all are stored or "
                "none. The next chat turn replays them.",
                "parameters": [_ref(_PARAMS, "Include")],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(_SCHEMAS, "ItemsCreate")}},
                },
                "responses": {
                    "200": _json(_ref(_SCHEMAS, "ItemList"), "The items created."),
                    **_errors("400", "404", "422", "501", "503"),
                },
            },
        },
        f"{prefix}/{{conversation_id}}/items/{{item_id}}": {
            "parameters": [*item[:1], _ref(_PARAMS, "ItemId"), *item[1:]],
            "get": {
                "operationId": op("getItem"),
                "tags": tag,
                "summary": "One item",
                "parameters": [_ref(_PARAMS, "Include")],
                "responses": {
                    "200": _json(_ref(_SCHEMAS, "Item"), "The item."),
                    **_errors("400", "404", "501", "503"),
                },
            },
            "delete": {
                "operationId": op("deleteItem"),
                "tags": tag,
                "summary": "Delete the stored message the item belongs to (all its items)",
                "description": "Its seq is never reused; the next chat turn no longer "
                "replays it. Answers with the conversation, as OpenAI does.",
                "responses": {
                    "200": conversation,
                    **_errors("400", "404", "409", "501", "503"),
                },
            },
        },
        f"{prefix}/{{conversation_id}}/restore": {
            "parameters": item,
            "post": {
                "operationId": op("restoreConversation"),
                "tags": tag,
                "summary": "Undo a soft delete",
                "responses": {"200": conversation, **_errors("400", "404", "501", "503")},
            },
        },
    }


def _chat_completions() -> dict[str, Any]:
    conversation_header = {
        "description": "The stored conversation this exchange belongs to (stateful modes).",
        "schema": _CONVERSATION_ID,
    }
    return {
        "post": {
            "operationId": "createChatCompletion",
            "tags": ["chat"],
            "summary": "OpenAI-compatible chat completions, relayed and persisted",
            "description": "X-Conversation-ID (or body conversation_id) continues a "
            "conversation; no id and no system message starts one; a system message and no "
            "id is stateless. Streams are relayed in bundles of STREAM_BUNDLE_TOKENS deltas.",
            "parameters": [
                _ref(_PARAMS, "ConversationHeader"),
                _ref(_PARAMS, "AgentHeader"),
                _ref(_PARAMS, "BackgroundHeader"),
                *_session_parameters(),
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref(_SCHEMAS, "ChatCompletionRequest")}
                },
            },
            "responses": {
                "200": {
                    "description": "A chat.completion, or with stream=true an SSE stream of "
                    "chat.completion.chunk events ending with data: [DONE].",
                    "headers": {
                        "X-Conversation-ID": conversation_header,
                        "X-Message-ID": {
                            "description": "A stored stream's reply: resume it with GET "
                            "/v1/conversations/{id}/messages/{message_id}/stream. Each event's "
                            "SSE id is <message id>:<offset>, the length of the reply's content "
                            "received once the event is applied.",
                            "schema": _MESSAGE_ID,
                        },
                    },
                    "content": {
                        "application/json": {"schema": _ref(_SCHEMAS, "ChatCompletion")},
                        "text/event-stream": _EVENT_STREAM,
                    },
                },
                **_errors("400", "404", "422", "501", "503"),
                "413": _json(_ref(_SCHEMAS, "Error"), "Request body too large."),
                "502": _json(
                    _ref(_SCHEMAS, "Error"),
                    "The upstream could not be reached, or its answer was unusable or too large.",
                ),
                "504": _json(
                    _ref(_SCHEMAS, "Error"),
                    "The upstream sent nothing for UPSTREAM_READ_TIMEOUT_S.",
                ),
            },
        }
    }


def _relay() -> dict[str, Any]:
    path_param = {
        "name": "path",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The rest of the path (may contain slashes), appended to UPSTREAM_BASE_URL.",
    }
    item: dict[str, Any] = {"parameters": [path_param]}
    for method in _RELAY_METHODS:
        item[method] = {
            "operationId": f"relay{method.capitalize()}",
            "tags": ["relay"],
            "summary": "Any other /v1 path (e.g. /v1/models), relayed upstream unchanged",
            "responses": {
                "default": {
                    "description": "Whatever the upstream answers (streamed through).",
                    "content": {"*/*": {"schema": {}}},
                },
                "400": _json(
                    _ref(_SCHEMAS, "Error"), "A path that could leave UPSTREAM_BASE_URL's path."
                ),
                "401": _ref(_RESPONSES, "Unauthorized"),
                "502": _json(
                    _ref(_SCHEMAS, "Error"),
                    "The upstream could not be reached, or answered with an upgrade (101).",
                ),
                "504": _json(
                    _ref(_SCHEMAS, "Error"),
                    "The upstream sent nothing for UPSTREAM_READ_TIMEOUT_S.",
                ),
            },
        }
    return {"/v1/{path}": item}


def _operations() -> dict[str, Any]:
    health = _ref(_SCHEMAS, "Health")
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": "Liveness, and whether the store is writable",
                "security": [],
                "responses": {
                    "200": _json(health, "Healthy."),
                    "503": _json(health, "The store is not writable."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (requests, streams, chunks, failures, rebuilds)",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _ref(_RESPONSES, "Unauthorized"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI 3.1 document."),
                    "401": _ref(_RESPONSES, "Unauthorized"),
                },
            }
        },
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {"/v1/chat/completions": _chat_completions()}
    for prefix, suffix in _HISTORY_PREFIXES:
        paths.update(_history_paths(prefix, suffix))
    paths.update(_relay())
    paths.update(_operations())
    paths.update(page_openapi_paths())  # GET / and /static/{path}: the chat page (edge.page)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edge",
            "version": __version__,
            "summary": "An OpenAI-compatible proxy that persists conversations while they stream.",
            "description": "History endpoints are also served under /api/conversations. With "
            "PERSIST_TRANSCRIPTS=false they answer 501. Every error is "
            '{"error": {"message", "type", "param", "code"}}.',
        },
        "tags": [
            {"name": "chat", "description": "The OpenAI-compatible relay."},
            {"name": "conversations", "description": "Stored history, scoped to the session."},
            {"name": "relay", "description": "Other /v1 paths, passed through."},
            {"name": "operations", "description": "Health, metrics and this document."},
            {"name": "page", "description": "The chat page and its static files."},
        ],
        "servers": [{"url": "/"}],
        "security": [{}, {"edgeKey": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "parameters": _parameters(),
            "responses": _responses(),
            "securitySchemes": {
                "edgeKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Required when EDGE_API_KEYS is set (never forwarded).",
                }
            },
        },
    }
