"""Property tests: streamed content round-trips exactly, and the store behaves like a model.

Example counts stay small by default; ``STRESS=1`` runs many more.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field

import pytest
from chunkstore_support import STRESS, chunk_files, message_files
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
)

from chunkstore import ConversationDeleted, ConversationNotFound, Store

EXAMPLES = 1000 if STRESS else 30
STEPS = 50 if STRESS else 15

# Any text a model can stream: unicode (astral planes, combining marks, RTL), newlines,
# quotes and backslashes that JSON must escape, and empty tokens.
tokens_strategy = st.lists(st.text(max_size=12), max_size=250)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tokens=tokens_strategy, chunk_tokens=st.integers(1, 100), finish=st.booleans())
def test_streamed_content_round_trips(
    tmp_path_factory: pytest.TempPathFactory, tokens: list[str], chunk_tokens: int, finish: bool
) -> None:
    root = str(tmp_path_factory.mktemp("prop"))
    store = Store(root, durability="none", flush_interval=None)
    conv = store.create_conversation(store.user_for("s"))
    w = store.stream_message(conv.id, chunk_tokens=chunk_tokens)
    for token in tokens:
        w.append(token)
    assert w.chunks_written == len(tokens) // chunk_tokens
    w.flush()
    n = len(tokens)
    # Before sealing, one file per started chunk.
    assert len(chunk_files(root, w.message_id)) == math.ceil(n / chunk_tokens)
    live = store.messages(conv.id)[0]
    assert (live.content, live.token_count, live.status) == ("".join(tokens), n, "streaming")

    message = w.finish() if finish else w.fail("cut")
    assert message_files(root, conv.id) == [f"{w.message_id}.json"]  # sealed: one file
    for reader in (store, Store(root, durability="none")):
        (read,) = reader.messages(conv.id)
        assert read == message
        assert read.content == "".join(tokens)
        assert read.token_count == n
        assert read.status == ("complete" if finish else "error")
    assert store.check() == []


# -- the stateful model -------------------------------------------------------------------------


@dataclass
class ModelConversation:
    id: str
    deleted: bool = False
    gone: bool = False
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # role, content, status


text = st.text(max_size=20)
token_lists = st.lists(st.text(max_size=6), max_size=12)


class StoreMachine(RuleBasedStateMachine):
    """The store against an in-memory model of what it must hold."""

    conversations = Bundle("conversations")

    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="chunkstore-state-")
        self.store = self.open()
        self.user = self.store.user_for("the-user")
        self.model: dict[str, ModelConversation] = {}

    def open(self) -> Store:
        return Store(self.root, durability="none", flush_interval=None, chunk_tokens=3)

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

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
        end=st.sampled_from(["finish", "fail", "abandon", "crash", "exception"]),
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
        elif end == "crash":  # the writer dies: only the whole chunks written survive
            w._sink.release()  # its lock goes, its unwritten tokens with it
            content = "".join(tokens[: len(tokens) // 3 * 3])
            conv.messages.append(("assistant", content, "interrupted"))
            return
        else:
            try:
                with w:
                    raise RuntimeError("client went away")
            except RuntimeError:
                pass
            status = "error"
        conv.messages.append(("assistant", "".join(tokens), status))

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

    @invariant()
    def listing_matches_the_model(self) -> None:
        newest_first = sorted(self.model.values(), key=lambda c: int(c.id[7:]), reverse=True)
        visible = [c.id for c in newest_first if not c.gone and not c.deleted]
        everything = [c.id for c in newest_first if not c.gone]
        assert [c.id for c in self.store.list_conversations(self.user, limit=1000)] == visible
        listed = self.store.list_conversations(self.user, limit=1000, include_deleted=True)
        assert [c.id for c in listed] == everything
        for conv in self.model.values():
            if not conv.gone:
                assert self.store.get_conversation(conv.id).deleted == conv.deleted

    @invariant()
    def store_checks_clean(self) -> None:
        # Interrupted messages (abandoned writers) are a valid state, not a problem.
        assert self.store.check() == []


StoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None
)
TestStoreMachine = StoreMachine.TestCase
