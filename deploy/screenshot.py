"""Screenshot of an MLflow run page with headless Chromium, taken once the page has rendered the run.

``chromium --headless --screenshot`` fires at the load event, when MLflow's single-page UI still shows
placeholders (its data arrives by later API calls, slowly on a loaded machine). So this drives the same
headless Chromium through the DevTools protocol: open the page, wait until the given texts appear, close the
assistant side panel, switch the sidebar to "Model training", reload the run, wait, capture.

    denseflow ui --port 5000 &
    python deploy/screenshot.py "http://127.0.0.1:5000/#/experiments/1/runs/RUN_ID" docs/mlflow_run.png RUN_NAME ndcg_at_10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import websockets

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TEXT = "document.body ? document.body.innerText : ''"
TIDY = """(() => {
  const close = [...document.querySelectorAll('button')].find(b => /close/i.test(b.getAttribute('aria-label') || ''));
  if (close) close.click();
  const training = [...document.querySelectorAll('button, label, span, div')]
    .find(e => e.children.length === 0 && e.textContent.trim() === 'Model training');
  if (training) training.click();
  return [Boolean(close), Boolean(training)];
})()"""


class Page:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == self.next_id:
                return message.get("result", {})

    async def text(self) -> str:
        result = await self.call("Runtime.evaluate", expression=PAGE_TEXT, returnByValue=True)
        return result["result"].get("value", "")

    async def wait_for(self, texts: list[str], timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            shown = await self.text()
            if all(text in shown for text in texts):
                return time.monotonic() - start
            await asyncio.sleep(2)
        raise TimeoutError(f"page never showed {texts} within {timeout:.0f}s")


async def capture(port: int, url: str, out: Path, texts: list[str], width: int, height: int, timeout: float) -> None:
    for _ in range(120):
        try:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
            break
        except httpx.HTTPError:
            await asyncio.sleep(1)
    target = next(item for item in targets if item["type"] == "page")
    async with websockets.connect(target["webSocketDebuggerUrl"], max_size=100_000_000) as ws:
        page = Page(ws)
        await page.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )
        await page.call("Page.navigate", url=url)
        print(f"rendered after {await page.wait_for(texts, timeout):.0f}s")
        await asyncio.sleep(5)
        await page.call("Runtime.evaluate", expression=TIDY, returnByValue=True)
        await asyncio.sleep(5)
        await page.call("Page.navigate", url=url)
        await page.wait_for(texts, timeout)
        await asyncio.sleep(15)  # charts and the last API calls
        shot = await page.call("Page.captureScreenshot", format="png")
    out.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("texts", nargs="+", help="texts the page must show before the capture")
    parser.add_argument("--size", default="1400,1000")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split(","))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp()}", f"--window-size={width},{height}"]
    chromium = subprocess.Popen(
        ["chromium", *flags, f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        asyncio.run(capture(port, args.url, args.out, args.texts, width, height, args.timeout))
    finally:
        os.killpg(chromium.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
