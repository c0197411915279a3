"""Send a spam text through the Chainlit app (examples/chainlit_spam.py) in Debian's chromium and
save a screenshot of the answer; the app and `tunesmith serve` must be running.

    python scripts/chainlit_screenshot.py [--url http://127.0.0.1:8001] [--out docs/images/chainlit_spam.png]
"""

import argparse

from playwright.sync_api import sync_playwright

SPAM = "WINNER! Claim your free prize now, call 09061701461"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8001")
    p.add_argument("--out", default="docs/images/chainlit_spam.png")
    args = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(args.url, timeout=60_000)
        page.locator("textarea").first.fill(SPAM)
        page.keyboard.press("Enter")
        answer = page.get_by_text("spam (", exact=False).first
        answer.wait_for(timeout=60_000)
        page.screenshot(path=args.out)
        print(f"answer: {answer.inner_text()}; screenshot in {args.out}")
        browser.close()


if __name__ == "__main__":
    main()
