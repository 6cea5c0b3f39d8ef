"""The web chat page in a real browser: Playwright driving Debian's chromium against a real server.

Open the page, send a message (Chinese), watch the reply stream, press stop, regenerate,
see a tool call and its result rendered apart from the text, Markdown rendered with HTML
escaped, the conversation kept across a reload, a phone-sized layout, and no request to
anywhere but the server. Screenshots are kept in test-artifacts/ (web_chat.png, web_chat_phone.png).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from helpers import ROOT
from test_serve import QUESTION, chatty_model, start_server, tool_model

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

# generous waits: the machine running the tests may be busy with other work
sync_api.expect.set_options(timeout=60_000)
pytestmark = [pytest.mark.slow,  # a real browser against a real server
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def chatty_server(tmp_path_factory):
    # long replies (they run to max_tokens) at a speed a person, or a test, can press stop during
    model = chatty_model(tmp_path_factory.mktemp("web") / "chatty", dim=128, n_layers=4, max_seq_len=4096)
    with start_server(model, "chatty") as s:
        yield s


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    with start_server(tool_model(tmp_path_factory.mktemp("web") / "tool"), "tool-model") as s:
        yield s


def open_page(browser, url: str, **context_args):
    context = browser.new_context(**context_args)
    context.set_default_timeout(60_000)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    sync_api.expect(page.locator("#status")).to_have_text("ready")
    return context, page, requests, errors


def assistant_text(page) -> str:
    return page.locator(".msg.assistant .content").last.inner_text()


def wait_for_length(page, n: int, timeout: float = 120.0) -> int:
    """Poll until the last reply shows more than ``n`` characters (from Python: the page's CSP forbids eval)."""
    deadline = time.monotonic() + timeout
    while (length := len(assistant_text(page))) <= n:
        assert time.monotonic() < deadline, f"the reply stayed at {length} characters"
        time.sleep(0.02)
    return length


def set_max_tokens(page, n: int) -> None:
    page.fill("#max-tokens", str(n))
    page.locator("#max-tokens").dispatch_event("change")


def test_stream_stop_regenerate_and_persist(browser, chatty_server):
    context, page, requests, errors = open_page(browser, chatty_server.url)
    expect = sync_api.expect
    expect(page.locator("#model-name")).to_have_text("chatty")
    set_max_tokens(page, 3500)
    page.click("#input")
    page.keyboard.insert_text("你好，世界！请写一首诗。")  # as an input method delivers text
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user")).to_have_text("你好，世界！请写一首诗。")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator(".msg.assistant.streaming")).to_have_count(1)

    # the reply grows while we watch: it is streamed, not delivered at the end
    first = wait_for_length(page, 20)
    wait_for_length(page, first + 20)

    page.click("#stop")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator(".msg.assistant .note")).to_have_text("(stopped)")
    stopped = assistant_text(page)
    deadline = time.monotonic() + 60  # the server frees the slot of the closed stream
    while httpx.get(chatty_server.url + "/health", timeout=300).json()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(chatty_server.url + "/health", timeout=300).json()["active"] == 0
    assert assistant_text(page) == stopped  # and nothing arrived after stop, though the server went on a while

    set_max_tokens(page, 40)
    page.click("#regenerate")
    expect(page.locator(".msg.assistant.streaming")).to_have_count(0, timeout=120_000)
    expect(page.locator(".msg.assistant")).to_have_count(1)
    expect(page.locator(".msg.assistant .note")).to_have_text("(reached the token limit)")
    assert assistant_text(page) != stopped

    # the conversation lives in the browser: it survives a reload
    page.reload()
    expect(page.locator(".msg.user")).to_have_text("你好，世界！请写一首诗。")
    expect(page.locator("#chat-list li")).to_have_count(1)
    expect(page.locator("#chat-list li .open")).to_have_text("你好，世界！请写一首诗。")
    # multi-turn: a second message continues the same conversation
    page.fill("#input", "再来一首")
    page.click("#send")
    expect(page.locator(".msg.user")).to_have_count(2)
    expect(page.locator(".msg.assistant.streaming")).to_have_count(0, timeout=120_000)
    expect(page.locator(".msg.assistant")).to_have_count(2)
    assert all(u.startswith(chatty_server.url) for u in requests), requests  # offline: nothing but the server
    assert errors == []
    context.close()


def test_tool_calls_markdown_and_screenshots(browser, tool_server):
    ARTIFACTS.mkdir(exist_ok=True)
    context, page, requests, errors = open_page(browser, tool_server.url, viewport={"width": 1100, "height": 760})
    expect = sync_api.expect
    page.locator("#temperature").evaluate("(e) => { e.value = 0; e.dispatchEvent(new Event('input')); }")
    expect(page.locator("#temperature-value")).to_have_text("0.00")
    page.fill("#input", QUESTION[0]["content"])
    page.keyboard.press("Enter")
    expect(page.locator(".tool-call")).to_contain_text("37*12", timeout=120_000)
    expect(page.locator(".tool-result")).to_contain_text("444")
    expect(page.locator(".msg.assistant.streaming")).to_have_count(0, timeout=120_000)
    assert assistant_text(page).endswith("It is 444.")
    # the call and its result are boxes of their own, between the text before and after
    order = page.locator(".msg.assistant .content > *").evaluate_all("(es) => es.map((e) => e.className || e.tagName)")
    assert order == ["P", "tool-call", "tool-result", "P"], order

    # a user message that looks like HTML is shown as text, never run
    page.fill("#input", '<img src=x onerror="window.pwned=1"> **not bold**')
    page.keyboard.press("Enter")
    expect(page.locator(".msg.user").last).to_have_text('<img src=x onerror="window.pwned=1"> **not bold**')
    expect(page.locator(".msg.assistant.streaming")).to_have_count(0, timeout=120_000)
    assert page.evaluate("window.pwned") is None

    md = page.evaluate("""window.foundryChat.markdown(
        '# Title\\n**bold** and `a<b>` and [link](https://example.org) [bad](javascript:alert(1))\\n\\n' +
        '- one\\n- two\\n\\n```python\\nprint("<script>")\\n```\\n1. first\\n2. second')""")
    assert "<h1>Title</h1>" in md and "<strong>bold</strong>" in md and "<code>a&lt;b&gt;</code>" in md
    assert '<a href="https://example.org" target="_blank" rel="noopener noreferrer">link</a>' in md
    assert "javascript:" not in md.split("[bad]")[0] and 'href="javascript' not in md
    assert "<ul><li>one</li><li>two</li></ul>" in md and "<ol><li>first</li><li>second</li></ol>" in md
    assert '<pre><span class="lang">python</span><code>print(&quot;&lt;script&gt;&quot;)</code></pre>' in md
    page.screenshot(path=str(ARTIFACTS / "web_chat.png"), full_page=True)
    print(f"screenshot: {ARTIFACTS / 'web_chat.png'}")

    # phone-sized: the sidebar becomes a drawer, nothing overflows sideways
    phone, mpage, _, _ = open_page(browser, tool_server.url, viewport={"width": 390, "height": 844},
                                   is_mobile=True, has_touch=True)
    expect(mpage.locator("#toggle-sidebar")).to_be_visible()
    expect(mpage.locator("#sidebar")).not_to_be_in_viewport()
    mpage.fill("#input", "What is 37*12?")
    mpage.click("#send")
    expect(mpage.locator(".msg.assistant.streaming")).to_have_count(0, timeout=120_000)
    assert mpage.evaluate("document.documentElement.scrollWidth") <= 390
    mpage.screenshot(path=str(ARTIFACTS / "web_chat_phone.png"))
    mpage.click("#toggle-sidebar")
    expect(mpage.locator("#sidebar")).to_be_in_viewport()
    assert all(u.startswith(tool_server.url) for u in requests)
    assert errors == []
    phone.close()
    context.close()


def test_page_asks_for_the_api_key(browser, tmp_path):
    with start_server(tool_model(tmp_path / "tool", steps=1), "keyed", api_key="sk-page") as s:
        context = browser.new_context()
        page = context.new_page()
        page.goto(s.url + "/")
        sync_api.expect(page.locator("#status")).to_have_text("API key needed (see settings)")
        page.fill("#api-key", "sk-page")
        page.locator("#api-key").dispatch_event("change")
        sync_api.expect(page.locator("#status")).to_have_text("ready")
        sync_api.expect(page.locator("#model-name")).to_have_text("keyed")
        context.close()
