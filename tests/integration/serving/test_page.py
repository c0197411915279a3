"""The web page in a real headless browser (Debian's chromium through Playwright): a streamed chat
reply, and the spam classifier's label. (docs/serving.md's screenshot, of the embedded model, is
made by scripts/serving_screenshot.py.)"""

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium: apt-get install -y chromium"),
]


def test_chat_streams_a_reply_and_classify_says_spam(live, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(live.url + "/")
        page.wait_for_selector("#chat-model option[value='lora']", state="attached")
        page.select_option("#chat-model", "lora")
        page.fill("#chat-input", "hello there")
        page.click("#chat-form button")
        reply = page.wait_for_selector(".assistant[data-done='1']", timeout=20000)
        assert reply.text_content().strip()
        assert page.text_content(".user") == "you: hello there"
        page.click("#tab-classify")
        page.select_option("#cls-model", "spam")
        page.fill("#cls-input", "win a prize now A")
        page.click("#cls-form button")
        page.wait_for_function("document.getElementById('result').textContent.length > 0")
        assert page.text_content("#result").startswith("spam (")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 1000
