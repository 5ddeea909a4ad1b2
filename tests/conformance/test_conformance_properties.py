"""Property tests on every backend: streamed content round-trips exactly, and the store
behaves like an in-memory model of it (a hypothesis state machine).

Example counts stay small by default; ``STRESS=1`` runs many more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from conformance_support import STRESS, open_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chunkstore import ConversationDeleted, ConversationNotFound, Store

EXAMPLES = 1000 if STRESS else 30
MACHINE_EXAMPLES = 200 if STRESS else 15
STEPS = 50 if STRESS else 15

# Any text a model can stream: unicode (astral planes, combining marks, RTL), newlines,
# quotes and backslashes that JSON must escape, NUL, lone surrogates excepted; empty tokens.
tokens_strategy = st.lists(st.text(max_size=12), max_size=250)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tokens=tokens_strategy, chunk_tokens=st.integers(1, 100), end=st.sampled_from("fa"))
def test_streamed_content_round_trips(
    make_url: Callable[[], str], tokens: list[str], chunk_tokens: int, end: str
) -> None:
    url = make_url()
    store = open_store(url)
    conv = store.create_conversation(store.user_for("s"))
    w = store.stream_message(conv.id, chunk_tokens=chunk_tokens)
    for token in tokens:
        w.append(token)
    assert w.chunks_written == len(tokens) // chunk_tokens
    n = len(tokens)
    written = len(tokens) // chunk_tokens * chunk_tokens
    (live,) = store.messages(conv.id)
    assert (live.content, live.token_count, live.status) == (
        "".join(tokens[:written]),
        written,
        "streaming",
    )
    w.flush()
    (live,) = store.messages(conv.id)
    assert (live.content, live.token_count, live.status) == ("".join(tokens), n, "streaming")

    message = w.finish() if end == "f" else w.fail("cut")
    with open_store(url) as fresh:
        for reader in (store, fresh):
            (read,) = reader.messages(conv.id)
            assert read == message
            assert read.content == "".join(tokens)
            assert read.token_count == n
            assert read.status == ("complete" if end == "f" else "error")
    assert store.check() == []
    store.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=st.text(), role=st.sampled_from(["system", "developer", "user", "tool"]))
def test_appended_content_round_trips(make_url: Callable[[], str], content: str, role: str) -> None:
    url = make_url()
    with open_store(url) as store:
        conv = store.create_conversation(store.user_for("s"))
        message = store.append_message(conv.id, role, content)
    with open_store(url) as fresh:
        assert fresh.messages(conv.id) == [message]
        assert message.content == content


# -- the stateful model -------------------------------------------------------------------------


@dataclass
class ModelConversation:
    id: str
    title: str | None = None
    pinned: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    deleted: bool = False
    gone: bool = False
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # role, content, status


text = st.text(max_size=20)
token_lists = st.lists(st.text(max_size=6), max_size=12)
metadata = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3)


class StoreMachine(RuleBasedStateMachine):
    """The store against an in-memory model of what it must hold. ``make_url`` gives the
    backend's fresh store."""

    make_url: Callable[[], str]
    conversations = Bundle("conversations")

    def __init__(self) -> None:
        super().__init__()
        self.url = self.make_url()
        self.stores: list[Store] = []
        self.store = self.open()
        self.user = self.store.user_for("the-user")
        self.model: dict[str, ModelConversation] = {}

    def open(self) -> Store:
        store = open_store(self.url, chunk_tokens=3)
        self.stores.append(store)
        return store

    def teardown(self) -> None:
        for store in self.stores:
            store.close()

    @initialize(target=conversations)
    def first_conversation(self) -> ModelConversation:
        return self.create()

    @rule(target=conversations)
    def create(self) -> ModelConversation:
        conv = self.store.create_conversation(self.user)
        assert conv.id not in self.model  # ids are never reused
        self.model[conv.id] = ModelConversation(conv.id)
        return self.model[conv.id]

    @rule(conv=conversations, role=st.sampled_from(["user", "assistant", "system"]), content=text)
    def append(self, conv: ModelConversation, role: str, content: str) -> None:
        if conv.gone:
            with pytest.raises(ConversationNotFound):
                self.store.append_message(conv.id, role, content)
        elif conv.deleted:
            with pytest.raises(ConversationDeleted):
                self.store.append_message(conv.id, role, content)
        else:
            message = self.store.append_message(conv.id, role, content)
            conv.messages.append((role, content, "complete"))
            assert message.seq == len(conv.messages)

    @rule(
        conv=conversations,
        tokens=token_lists,
        end=st.sampled_from(["finish", "fail", "abandon", "exception"]),
    )
    def stream(self, conv: ModelConversation, tokens: list[str], end: str) -> None:
        if conv.gone or conv.deleted:
            with pytest.raises(ConversationNotFound if conv.gone else ConversationDeleted):
                self.store.stream_message(conv.id)
            return
        w = self.store.stream_message(conv.id)
        for token in tokens:
            w.append(token)
        if end == "finish":
            w.finish()
            status = "complete"
        elif end == "fail":
            w.fail("boom")
            status = "error"
        elif end == "abandon":  # stop without sealing: flushed, then interrupted
            w.abandon()
            status = "interrupted"
        else:
            try:
                with w:
                    raise RuntimeError("client went away")
            except RuntimeError:
                pass
            status = "error"
        conv.messages.append(("assistant", "".join(tokens), status))

    @rule(
        conv=conversations,
        title=st.none() | text,
        pinned=st.none() | st.booleans(),
        meta=st.none() | metadata,
    )
    def update(
        self,
        conv: ModelConversation,
        title: str | None,
        pinned: bool | None,
        meta: dict[str, str] | None,
    ) -> None:
        changes: dict[str, object] = {"title": title}
        if pinned is not None:
            changes["pinned"] = pinned
        if meta is not None:
            changes["metadata"] = meta
        if conv.gone:
            with pytest.raises(ConversationNotFound):
                self.store.update_conversation(conv.id, **changes)  # type: ignore[arg-type]
            return
        updated = self.store.update_conversation(conv.id, **changes)  # type: ignore[arg-type]
        conv.title = title
        conv.pinned = conv.pinned if pinned is None else pinned
        conv.metadata = conv.metadata if meta is None else meta
        assert (updated.title, updated.pinned, updated.metadata) == (
            conv.title,
            conv.pinned,
            conv.metadata,
        )

    @rule(conv=conversations)
    def soft_delete(self, conv: ModelConversation) -> None:
        if conv.gone:
            with pytest.raises(ConversationNotFound):
                self.store.delete_conversation(conv.id)
            return
        self.store.delete_conversation(conv.id)
        conv.deleted = True

    @rule(conv=conversations)
    def restore(self, conv: ModelConversation) -> None:
        if conv.gone:
            with pytest.raises(ConversationNotFound):
                self.store.restore_conversation(conv.id)
            return
        self.store.restore_conversation(conv.id)
        conv.deleted = False

    @rule(conv=consumes(conversations))
    def hard_delete(self, conv: ModelConversation) -> None:
        if conv.gone:
            return
        self.store.delete_conversation(conv.id, hard=True)
        conv.gone = True

    @rule()
    def reopen(self) -> None:
        """Go on with another store on the same URL (a restart, or another process)."""
        self.store = self.open()

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def read_a_page(self, data: st.DataObject) -> None:
        live = [c for c in self.model.values() if not c.gone]
        if not live:
            return
        conv = data.draw(st.sampled_from(live))
        after = data.draw(st.integers(0, len(conv.messages) + 1))
        limit = data.draw(st.integers(1, 5))
        page = self.store.messages(conv.id, after_seq=after, limit=limit)
        expected = conv.messages[after : after + limit]
        assert [(m.role, m.content, m.status) for m in page] == expected
        assert [m.seq for m in page] == list(range(after + 1, after + 1 + len(expected)))

    @invariant()
    def messages_match_the_model(self) -> None:
        for conv in self.model.values():
            if conv.gone:
                with pytest.raises(ConversationNotFound):
                    self.store.messages(conv.id)
                continue
            messages = self.store.messages(conv.id, limit=None)
            assert [(m.role, m.content, m.status) for m in messages] == conv.messages
            assert [m.seq for m in messages] == list(range(1, len(conv.messages) + 1))
            assert not any(m.damaged for m in messages)
            assert self.store.message_count(conv.id) == len(conv.messages)

    @invariant()
    def conversations_match_the_model(self) -> None:
        newest_first = sorted(
            self.model.values(), key=lambda c: int(c.id.rsplit("-co", 1)[1]), reverse=True
        )
        visible = [c.id for c in newest_first if not c.gone and not c.deleted]
        everything = [c.id for c in newest_first if not c.gone]
        assert [c.id for c in self.store.list_conversations(self.user, limit=1000)] == visible
        listed = self.store.list_conversations(self.user, limit=1000, include_deleted=True)
        assert [c.id for c in listed] == everything
        for conv in self.model.values():
            if not conv.gone:
                got = self.store.get_conversation(conv.id)
                assert (got.title, got.pinned, got.metadata, got.deleted) == (
                    conv.title,
                    conv.pinned,
                    conv.metadata,
                    conv.deleted,
                )

    @invariant()
    def store_checks_clean(self) -> None:
        # Interrupted messages (abandoned writers) are a valid state, not a problem.
        assert self.store.check() == []


def test_store_behaves_like_the_model(make_url: Callable[[], str]) -> None:
    machine = type("BackendStoreMachine", (StoreMachine,), {"make_url": staticmethod(make_url)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=MACHINE_EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
