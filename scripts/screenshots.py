"""The README's dashboard screenshots, taken from the demo's real run.

    .venv/bin/python scripts/screenshots.py [--out docs] [--steps 150]

Runs ``retrain demo`` (a stand-in Fashion-MNIST, three variants trained for real, the same
data published again, then an increment) with its state in a temporary folder, and while its
stack is still up opens its dashboard in headless Chromium (``chromium`` and
``chromium-driver``; ``make tools`` installs them) and saves, each as tall as its page:

- ``dashboard-overview.png``: the served model and the demo's three runs;
- ``dashboard-run.png``: the newest run that trained, with its steps to scale, each
  variant's learning curves and the decisions;
- ``dashboard-models.png``: the champion history and every decision.
"""

from __future__ import annotations

import argparse
import base64
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 1280


def _full_page(browser: Any, name: str, out: Path) -> Path:
    """A screenshot of the whole page at ``WIDTH`` CSS pixels, as tall as its content
    (Chromium's own capture through chromedriver, so nothing is cut and nothing is blank)."""
    def cdp(command: str, **params: Any) -> Any:
        return browser.call("POST", "/goog/cdp/execute", {"cmd": command, "params": params})

    height = 800
    for _ in range(3):  # a viewport as tall as the content: no scrollbar, so the same width
        cdp("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height,
            deviceScaleFactor=1, mobile=False)
        content = math.ceil(cdp("Page.getLayoutMetrics")["cssContentSize"]["height"])
        if content == height:
            break
        height = content
    shot = cdp("Page.captureScreenshot", format="png",
               clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1})
    path = out / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def shoot(stack: Any, out: Path) -> list[Path]:
    """The overview, the newest run that trained and the models page of ``stack``'s dashboard."""
    import httpx

    from tests.dashboard.webdriver import Browser

    url = stack.ui_url
    runs = httpx.get(f"{url}api/runs", timeout=30).json()["runs"]
    trained = next(r for r in runs if r["trained"])
    browser = Browser(out)  # its own screenshots would go to ``out`` too; none are taken
    try:
        browser.open(url)
        browser.wait_text("main", trained["run_id"])
        saved = [_full_page(browser, "dashboard-overview", out)]
        browser.open(f"{url}runs/{trained['run_id']}")
        browser.wait_text("main", "decisions")
        if browser.count("svg.curve polyline") < 2 * len(trained["trained"]):
            raise RuntimeError(f"run {trained['run_id']} shows fewer curves than trainings")
        saved.append(_full_page(browser, "dashboard-run", out))
        browser.open(f"{url}models")
        browser.wait_text("main", "champion history")
        saved.append(_full_page(browser, "dashboard-models", out))
        return saved
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--steps", type=int, default=150, help="training steps per model")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rich.console import Console

    from core.settings import Settings
    from retrain.demo import DemoConfig, run_demo

    saved: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="retrain-screenshots-") as home:
        settings = Settings(home=Path(home), offline=True, serve_port=0, grpc_port=0,
                            ui_port=0, events_port=0, _env_file=None)  # type: ignore[call-arg]
        run_demo(settings, DemoConfig(steps=args.steps), Console(width=100),
                 while_up=lambda stack: saved.extend(shoot(stack, args.out.resolve())))
    for path in saved:
        print(f"saved {path}")


if __name__ == "__main__":
    main()
