"""The chat page in Chromium against an edge with ``EDGE_API_KEYS`` set: the page (static
files) loads without the key, asks for it, refuses a wrong one, and with the right one works
as usual; the key is kept in ``sessionStorage`` (this tab only), so a reload keeps working."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from page_support import LiveEdge, playwright_expect, shot

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = playwright_expect()

KEY = "edge-page-key-1"


@pytest.mark.edge_config(edge_api_keys=frozenset({KEY}))
def test_the_page_asks_for_the_edges_key_and_keeps_it_in_the_tab(
    page: Page, live_edge: LiveEdge
) -> None:
    page.goto("/")
    form = page.locator("#key-form")
    expect(form).to_be_visible()
    expect(page.locator("#key-message")).to_be_hidden()
    # Nothing was loaded without the key.
    assert page.evaluate("document.body.dataset.ready") is None
    assert page.locator("#model option").count() == 0
    shot(page, "17-key-asked")

    page.fill("#key-input", "not-the-key")
    page.click("#key-submit")
    expect(page.locator("#key-message")).to_contain_text("refused")
    expect(form).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('edge.apiKey')") is None
    shot(page, "18-key-refused")

    page.fill("#key-input", KEY)
    page.press("#key-input", "Enter")
    page.wait_for_selector("body[data-ready=true]")
    expect(form).to_be_hidden()
    assert page.locator("#model option").all_inner_texts()[:2] == ["say", "tokens-30"]

    page.select_option("#model", "say")
    page.fill("#prompt", "hello behind a key")
    page.press("#prompt", "Enter")
    answer = page.locator("article.message.assistant").last
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".body")).to_have_text("hello behind a key")
    expect(page.locator("#conversations li")).to_have_count(1)
    assert len(live_edge.chat_requests()) == 1
    # The key went upstream never, and stays in this tab: sessionStorage, no localStorage, no cookie.
    assert all(
        KEY not in str(request.headers.get("Authorization", ""))
        for request in live_edge.chat_requests()
    )
    assert page.evaluate("sessionStorage.getItem('edge.apiKey')") == KEY
    assert KEY not in page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
    assert all(KEY not in cookie["value"] for cookie in page.context.cookies())
    # Without it the API is still closed to this session.
    assert page.request.get("/v1/conversations").status == 401

    # A reload in the same tab keeps the key: no form, the conversation is there.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(form).to_be_hidden()
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("article.message.assistant").last.locator(".body")).to_have_text(
        "hello behind a key"
    )
    page.fill("#prompt", "and again")
    page.press("#prompt", "Enter")
    expect(page.locator("article.message.assistant").last.locator(".body")).to_have_text(
        "and again"
    )
    expect(page.locator("article.message.assistant").last).to_have_attribute(
        "data-status", "complete"
    )
    assert len(live_edge.chat_requests()) == 2
    shot(page, "19-key-kept")
