"""docs/images/serving_page.png: the page of `tunesmith serve` on the embedded model, after one
streamed chat reply, taken in Debian's headless chromium (apt-get install chromium).

Run: PYTHONPATH=src python scripts/serving_screenshot.py [--adapter NAME=DIR ...]
"""

import argparse
import shutil
import threading
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "serving_page.png"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--adapter", action="append", default=[])
    p.add_argument("--message", default="Name three primary colours.")
    args = p.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright

    from tunesmith.serving.server import build_app, parse_adapters

    app = build_app(args.model, parse_adapters(args.adapter))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 900, "height": 560})
        page.goto(url)
        page.wait_for_selector("#chat-model option", state="attached")
        page.fill("#chat-input", args.message)
        page.click("#chat-form button")
        page.wait_for_selector(".assistant[data-done='1']", timeout=300000)
        page.screenshot(path=str(OUT))
        browser.close()
    server.should_exit = True
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
