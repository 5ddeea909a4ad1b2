"""The chat page (``GET /``) in Chromium against a live edge: a first message and its streamed
reply, the sidebar after a reload, resuming a reply after a reload, stop, rename / pin / delete
/ undo, paging and search, no HTML injection, the statuses of replies, and several streams at
once with their SSE events counted against the tokens and the chunk files written."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import pytest
from page_support import LiveEdge, playwright_expect, shot

from chunkstore import Store

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = playwright_expect()

STREAM_BUNDLE_TOKENS = 20
CHUNK_TOKENS = 60


def tokens(count: int) -> str:
    return "".join(f"tok{i} " for i in range(count))


def open_page(page: Page) -> None:
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")


def send(page: Page, text: str, model: str) -> None:
    page.select_option("#model", model)
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def reply(page: Page) -> Any:
    return page.locator("article.message.assistant").last


def titles(page: Page) -> list[str]:
    return page.locator("#conversations li .title").all_inner_texts()


def item(page: Page, title: str) -> Any:
    return page.locator("#conversations li").filter(has_text=title)


def current_id(page: Page) -> str:
    page.wait_for_function("() => location.hash.length > 1")
    return str(page.evaluate("decodeURIComponent(location.hash.slice(1))"))


def api(page: Page, method: str, path: str, data: Any = None) -> Any:
    """A call with the page's own session (the context's cookies)."""
    response = page.request.fetch(path, method=method, data=data)
    assert response.ok, (method, path, response.status, response.text())
    return response.json()


def stored_messages(page: Page, conversation_id: str) -> list[dict[str, Any]]:
    return list(api(page, "GET", f"/v1/conversations/{conversation_id}/messages?limit=100")["data"])


def test_a_first_message_gets_its_streamed_reply_and_survives_a_reload(
    page: Page, live_edge: LiveEdge
) -> None:
    open_page(page)
    assert page.locator("#model option").all_inner_texts()[:2] == ["say", "tokens-30"]
    expect(page.locator("#list-status")).to_have_text("No conversations yet.")
    shot(page, "01-empty")

    page.select_option("#model", "tokens-30")
    page.fill("#prompt", "Plan a trip")
    page.press("#prompt", "Shift+Enter")  # a new line, not a send
    page.keyboard.type("to Lisbon")
    # Enter while an IME composition is open does not send either.
    page.eval_on_selector(
        "#prompt",
        """el => el.dispatchEvent(new KeyboardEvent("keydown",
               {key: "Enter", isComposing: true, bubbles: true, cancelable: true}))""",
    )
    assert page.input_value("#prompt") == "Plan a trip\nto Lisbon"
    assert page.locator("article.message").count() == 0
    page.press("#prompt", "Enter")

    expect(reply(page)).to_have_attribute("data-status", "complete")
    expect(reply(page).locator(".body")).to_have_text(tokens(30).strip())
    expect(page.locator("article.message.user .body")).to_have_text("Plan a trip\nto Lisbon")
    assert page.input_value("#prompt") == ""
    conversation_id = current_id(page)
    expect(page.locator("#conversations li.active .title")).to_contain_text("Plan a trip")
    messages = stored_messages(page, conversation_id)
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert messages[1]["content"] == tokens(30)
    shot(page, "02-first-reply")

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations li.active")).to_have_attribute("data-id", conversation_id)
    expect(reply(page)).to_have_attribute("data-status", "complete")
    expect(reply(page).locator(".body")).to_have_text(tokens(30).strip())
    # A second page (no hash) lists it too, and opens it from the sidebar.
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    item(page, "Plan a trip").locator(".open").click()
    expect(reply(page).locator(".body")).to_have_text(tokens(30).strip())
    assert len(live_edge.chat_requests()) == 1


def test_model_output_and_titles_never_become_html(page: Page, live_edge: LiveEdge) -> None:
    open_page(page)
    hostile = (
        '<img src=x onerror="window.__pwned=1"> **bold** <script>window.__pwned=2</script>\n\n'
        '```js\nconst a = "<b>not bold</b>";\n```\n\n'
        "[click me](javascript:window.__pwned=3) and [docs](https://example.com/a?b=1)\n\n"
        "- one\n- two\n\n| a | b |\n|---|---|\n| <i>x</i> | `y` |"
    )
    send(page, hostile, "say")
    expect(reply(page)).to_have_attribute("data-status", "complete")
    body = reply(page).locator(".body")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator(".code-block code")).to_have_text('const a = "<b>not bold</b>";')
    expect(body.locator("li")).to_have_text(["one", "two"])
    expect(body.locator("td").first).to_have_text("<i>x</i>")
    links = body.locator("a")
    expect(links).to_have_count(1)  # the javascript: link is text, not a link
    assert links.get_attribute("href") == "https://example.com/a?b=1"
    assert links.get_attribute("rel") == "noopener noreferrer nofollow"
    expect(body).to_contain_text('<img src=x onerror="window.__pwned=1">')
    expect(body).to_contain_text("<script>window.__pwned=2</script>")
    expect(body).to_contain_text("click me")

    # The title (the first user message) is text too, in the sidebar and the header.
    conversation_id = current_id(page)
    expect(page.locator("#conversations li .title")).to_contain_text("<img src=x")
    api(
        page,
        "PATCH",
        f"/v1/conversations/{conversation_id}",
        {"title": '<img src=y onerror="window.__pwned=4"><b>t</b>'},
    )
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#chat-title")).to_have_text(
        '<img src=y onerror="window.__pwned=4"><b>t</b>'
    )
    expect(page.locator("#conversations li .title")).to_have_text(
        '<img src=y onerror="window.__pwned=4"><b>t</b>'
    )
    expect(reply(page).locator(".body strong")).to_have_text("bold")
    assert page.evaluate("window.__pwned") is None
    for where in ("#messages", "#conversations", "#chat-head"):
        assert page.locator(f"{where} img, {where} script, {where} b, {where} i").count() == 0
    shot(page, "03-injection-as-text")


def test_stop_ends_the_reply(page: Page, live_edge: LiveEdge) -> None:
    open_page(page)
    send(page, "Count slowly", "slow-2000-5")  # 2000 tokens, 10 s if not stopped
    expect(reply(page).locator(".body")).to_contain_text("tok25 ")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#send")).to_be_disabled()
    conversation_id = current_id(page)
    shot(page, "04-streaming")
    page.click("#stop")
    expect(reply(page)).to_have_attribute("data-status", "stopped", timeout=5000)
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#send")).to_be_enabled()
    (_, answer) = stored_messages(page, conversation_id)
    assert answer["status"] == "error"  # a stopped reply keeps its partial text
    assert tokens(25) in answer["content"] and len(answer["content"]) < len(tokens(2000))
    if "cancel" in page.evaluate("document.body.dataset.features").split():
        assert answer["status_reason"] == "cancelled"
    # The page shows what was stored (the edge may have had a few tokens more than it showed),
    # and nothing more comes.
    expect(reply(page).locator(".body")).to_have_text(answer["content"].strip())
    page.wait_for_timeout(300)
    expect(reply(page).locator(".body")).to_have_text(answer["content"].strip())
    expect(reply(page)).to_have_attribute("data-status", "stopped")  # after the re-read too
    shot(page, "05-stopped")
    assert len(live_edge.chat_requests()) == 1


def test_a_reload_mid_reply_resumes_it_without_sending_again(
    page: Page, live_edge: LiveEdge
) -> None:
    open_page(page)
    # The page follows a reply with the resume stream where the edge has one (its OpenAPI
    # document says so); an edge without it shows the stored reply instead.
    resumes = "resume" in page.evaluate("document.body.dataset.features").split()
    assert resumes == hasattr(live_edge.config, "background_generation")
    send(page, "Tell me a long story", "slow-200-20")  # 4 s
    expect(reply(page).locator(".body")).to_contain_text("tok10 ")
    conversation_id = current_id(page)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#conversations li.active")).to_have_attribute("data-id", conversation_id)
    if not resumes:
        # The reload ended the reply: its stored part is shown, marked, and not sent again.
        expect(reply(page)).to_have_attribute("data-status", "error")
        expect(reply(page).locator(".body")).to_contain_text("tok10 ")
        assert len(live_edge.chat_requests()) == 1
        shot(page, "07-reloaded-without-resume")
        return
    # Still streaming after the reload, then whole: every token once, in order.
    expect(reply(page)).to_have_attribute("data-status", "streaming")
    shot(page, "06-resuming")
    expect(reply(page)).to_have_attribute("data-status", "complete", timeout=10_000)
    expect(reply(page).locator(".body")).to_have_text(tokens(200).strip())
    streams = page.evaluate("edgeStats.streams")
    assert [s["kind"] for s in streams] == ["resume"]
    assert len(live_edge.chat_requests()) == 1  # the prompt was never sent again
    (question, answer) = stored_messages(page, conversation_id)
    assert (question["content"], answer["status"], answer["content"]) == (
        "Tell me a long story",
        "complete",
        tokens(200),
    )
    shot(page, "07-resumed")


def test_rename_pin_delete_and_restore(page: Page, live_edge: LiveEdge) -> None:
    open_page(page)  # the page's first API call gives the context its session cookie
    for title in ("Alpha trip", "Beta notes", "Gamma plan"):
        api(page, "POST", "/v1/conversations", {"title": title})
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#conversations li .title")).to_have_text(
        ["Gamma plan", "Beta notes", "Alpha trip"]
    )
    ids = {c["title"]: c["id"] for c in api(page, "GET", "/v1/conversations")["data"]}

    beta = item(page, "Beta notes")
    beta.hover()
    beta.get_by_role("button", name="Rename").click()
    page.fill(".rename-input", "Beta renamed")
    page.press(".rename-input", "Enter")
    expect(page.locator("#conversations li .title")).to_have_text(
        ["Gamma plan", "Beta renamed", "Alpha trip"]
    )
    assert api(page, "GET", f"/v1/conversations/{ids['Beta notes']}")["title"] == "Beta renamed"

    alpha = item(page, "Alpha trip")
    alpha.hover()
    alpha.get_by_role("button", name="Pin").click()
    expect(page.locator("#conversations li .title")).to_have_text(
        ["Alpha trip", "Gamma plan", "Beta renamed"]
    )
    expect(page.locator("#conversations li").first).to_have_class(re.compile(r"\bpinned\b"))
    assert api(page, "GET", f"/v1/conversations/{ids['Alpha trip']}")["pinned"] is True

    gamma = item(page, "Gamma plan")
    gamma.hover()
    gamma.get_by_role("button", name="Delete").click()
    expect(page.locator("#conversations li .title")).to_have_text(["Alpha trip", "Beta renamed"])
    toast = page.locator(".toast").filter(has_text="Deleted")
    expect(toast).to_contain_text("Gamma plan")
    listing = api(page, "GET", "/v1/conversations?include_deleted=1")["data"]
    assert next(c for c in listing if c["id"] == ids["Gamma plan"])["deleted_at"] is not None
    shot(page, "08-deleted-with-undo")
    toast.get_by_role("button", name="Undo").click()
    expect(page.locator("#conversations li .title")).to_have_text(
        ["Alpha trip", "Gamma plan", "Beta renamed"]
    )
    assert api(page, "GET", f"/v1/conversations/{ids['Gamma plan']}")["deleted_at"] is None

    # Escape leaves a rename without saving; the state holds across a reload.
    gamma = item(page, "Gamma plan")
    gamma.hover()
    gamma.get_by_role("button", name="Rename").click()
    page.fill(".rename-input", "never saved")
    page.press(".rename-input", "Escape")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#conversations li .title")).to_have_text(
        ["Alpha trip", "Gamma plan", "Beta renamed"]
    )
    item(page, "Alpha trip").hover()
    shot(page, "09-sidebar-pinned")


def test_more_on_scroll_and_search(page: Page, live_edge: LiveEdge) -> None:
    open_page(page)
    for i in range(45):
        api(page, "POST", "/v1/conversations", {"title": f"Trip {i:02d}"})
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    rows = page.locator("#conversations li")
    expect(rows).to_have_count(30)  # one page
    expect(rows.first).to_have_text(re.compile("Trip 44"))
    page.locator("#conversations").evaluate("el => el.scrollTop = el.scrollHeight")
    expect(rows).to_have_count(45)
    expect(rows.last).to_have_text(re.compile("Trip 00"))

    page.fill("#search", "trip 1")
    expect(page.locator("#conversations li .title")).to_have_text(
        [f"Trip {i:02d}" for i in range(19, 9, -1)]
    )
    shot(page, "10-search")
    page.fill("#search", "no such thing")
    expect(rows).to_have_count(0)
    expect(page.locator("#list-status")).to_have_text("No conversation matches.")
    page.fill("#search", "")
    # Filtering titles in the page keeps the list loaded; a server search (q= in the OpenAPI
    # document) lists again from the first page: either way, scrolling shows all 45.
    expect(rows.first).to_have_text(re.compile("Trip 44"))
    page.locator("#conversations").evaluate("el => el.scrollTop = el.scrollHeight")
    expect(rows).to_have_count(45)


def test_reply_statuses_are_shown(page: Page, live_edge: LiveEdge) -> None:
    open_page(page)
    # An upstream that breaks mid-reply: an error, with its partial text kept.
    send(page, "Break please", "drop-70")
    expect(reply(page)).to_have_attribute("data-status", "error")
    expect(reply(page).locator(".badge")).to_have_text("error")
    expect(reply(page).locator(".note")).to_be_visible()
    expect(reply(page).locator(".body")).to_contain_text("tok69")
    shot(page, "11-error")

    # A reply whose producer died: stored without its end, read back "interrupted".
    (session,) = [c["value"] for c in page.context.cookies() if c["name"] == "cf_session_id"]
    with Store(live_edge.store_root) as store:
        user = store.find_user(session)
        assert user is not None
        conversation = store.create_conversation(user, title="Cut off")
        store.append_message(conversation.id, role="user", content="Explain chunking")
        writer = store.stream_message(conversation.id, role="assistant")
        writer.open() if hasattr(writer, "open") else None
        for word in ("Chunks ", "are ", "written ", "every "):
            writer.append(word)
        writer.flush()
        writer.abandon()
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    item(page, "Cut off").locator(".open").click()
    expect(reply(page)).to_have_attribute("data-status", "interrupted")
    expect(reply(page).locator(".body")).to_have_text("Chunks are written every")
    expect(reply(page).locator(".note")).to_contain_text("interrupted")
    shot(page, "12-interrupted")

    # A stream whose storage failed says so (the edge flags its last chunk).
    chunk = (
        '{"id":"c1","object":"chat.completion.chunk","created":0,"model":"m",'
        '"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}'
    )
    failed = (
        '{"id":"c1","object":"chat.completion.chunk","created":0,"model":"m","choices":[],'
        '"metadata":{"storage_failed":true}}'
    )
    events = [chunk % "Not kept, ", chunk % "but shown.", failed, "[DONE]"]
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream"},
            body="".join(f"data: {e}\n\n" for e in events),
        ),
    )
    page.click("#new-chat")
    send(page, "Will this be saved?", "tokens-30")
    expect(reply(page).locator(".notice.storage-failed")).to_have_text(
        "response not saved to history"
    )
    expect(reply(page).locator(".body")).to_have_text("Not kept, but shown.")
    shot(page, "13-storage-failed")


def metric(page: Page, name: str) -> float:
    text = page.request.get("/metrics").text()
    (value,) = re.findall(rf"^{name} ([0-9.e+]+)$", text, flags=re.M)
    return float(value)


def test_several_streams_at_once(page: Page, live_edge: LiveEdge) -> None:
    """Three replies streaming at once in one page, each in its own conversation: every SSE
    event the page got carries a bundle of tokens (>= 3 a content event), and the store wrote
    a chunk per 3 bundles (CHUNK_TOKENS / STREAM_BUNDLE_TOKENS) besides the seal. Chunk files are merged into
    one file when a reply is sealed, so the edge's count of the chunk files it wrote
    (``edge_chunks_written_total``) is what is compared."""
    config = live_edge.config
    assert (config.stream_bundle_tokens, config.chunk_tokens) == (
        STREAM_BUNDLE_TOKENS,
        CHUNK_TOKENS,
    )
    count = 300
    open_page(page)
    started = []
    for i in range(3):
        page.click("#new-chat")
        send(page, f"Stream number {i}", f"slow-{count}-3")
        page.wait_for_function(f"() => edgeStats.streams.length === {i + 1}")
        started.append(current_id(page))
    expect(page.locator("#conversations li .live")).to_have_count(3)
    shot(page, "14-three-streams")
    page.wait_for_function(
        "() => edgeStats.streams.filter(s => s.done).length === 3", timeout=20_000
    )
    streams = page.evaluate("edgeStats.streams")
    assert sorted(s["conversation"] for s in streams) == sorted(started)
    assert len(set(started)) == 3
    # They ran at once: each started before any ended.
    assert max(s["started"] for s in streams) < min(s["ended"] for s in streams)
    for stream in streams:
        assert stream["status"] == "complete"
        assert stream["chars"] == len(tokens(count))  # every token, once
        assert count / stream["contentEvents"] >= 3, stream
        assert stream["events"] <= count / 3, stream  # all events: role, finish, [DONE] too
    # What the edge counted matches what the page got, and the chunks it wrote.
    bundles = sum(s["contentEvents"] for s in streams)
    assert metric(page, "edge_stream_tokens_total") == 3 * count
    assert metric(page, "edge_stream_events_total") >= sum(s["events"] for s in streams) - 3
    # A record per CHUNK_TOKENS tokens (300 tokens: 5), and the seal: an empty record of its
    # own, or the last chunk itself when that chunk was still pending as the stream ended (it
    # then goes to the seal). At least 3 bundles relayed per chunk of tokens written.
    token_chunks = 3 * math.ceil(count / CHUNK_TOKENS)
    records = metric(page, "edge_chunks_written_total")
    assert token_chunks <= records <= token_chunks + len(streams), records
    assert bundles / token_chunks >= 3, (bundles, token_chunks)
    for conversation_id in started:
        (_, answer) = stored_messages(page, conversation_id)
        assert (answer["status"], answer["content"]) == ("complete", tokens(count))
    # The last one is on screen, whole.
    expect(reply(page).locator(".body")).to_have_text(tokens(count).strip())
    shot(page, "15-three-done")


@pytest.mark.edge_config(persist_transcripts=False)
def test_with_persistence_off_the_page_sends_the_history_itself(
    page: Page, live_edge: LiveEdge
) -> None:
    open_page(page)
    expect(page.locator("#list-status")).to_contain_text("History is off on this edge")
    expect(page.locator("#search")).to_be_hidden()
    send(page, "first question", "say")
    expect(reply(page).locator(".body")).to_have_text("first question")
    expect(reply(page)).to_have_attribute("data-status", "complete")
    send(page, "second question", "say")
    expect(reply(page).locator(".body")).to_have_text("second question")
    # Nothing is stored, so the page sent the conversation so far (the edge would have).
    assert [(m["role"], m["content"]) for m in live_edge.chat_requests()[-1].json["messages"]] == [
        ("user", "first question"),
        ("assistant", "first question"),
        ("user", "second question"),
    ]
    assert page.evaluate("location.hash") == ""
    shot(page, "16-persistence-off")
