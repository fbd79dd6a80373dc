"""A small W3C WebDriver client (httpx) for Debian's chromedriver and headless Chromium: what
the browser tests need and nothing more."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C element reference key


class Browser:
    def __init__(self, artifacts: Path) -> None:
        driver, chromium = shutil.which("chromedriver"), shutil.which("chromium")
        if not driver or not chromium:
            raise RuntimeError("chromium and chromium-driver are needed (make tools installs them)")
        self.artifacts = artifacts
        artifacts.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self._driver = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        options = {"binary": chromium, "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1100", "--no-first-run", "--disable-extensions"]}
        answer = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"}}}})
        self._session = f"/session/{answer['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        response = self._http.request(method, path, json=body if body is not None else None)
        value = response.json()
        if response.status_code >= 400:
            raise RuntimeError(f"webdriver {method} {path}: {value}")
        return value.get("value", value) if isinstance(value, dict) else value

    def call(self, method: str, path: str, body: dict | None = None) -> object:
        return self._call(method, self._session + path, body)

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def find(self, css: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self.call("POST", "/element", {"using": "css selector", "value": css})
                return found[ELEMENT]  # type: ignore[index]
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def text(self, css: str, timeout: float = 15.0) -> str:
        return str(self.call("GET", f"/element/{self.find(css, timeout)}/text"))

    def wait_text(self, css: str, contains: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = self.text(css, 2)
            except RuntimeError:
                text = ""
            if contains in text or time.monotonic() > deadline:
                return text
            time.sleep(0.3)

    def click(self, css: str) -> None:
        self.call("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        self.call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def count(self, css: str) -> int:
        return len(self.call("POST", "/elements", {"using": "css selector", "value": css}))  # type: ignore[arg-type]

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        path.write_bytes(base64.b64decode(str(self.call("GET", "/screenshot"))))
        return path

    def console_errors(self) -> list[str]:
        entries = self.call("POST", "/se/log", {"type": "browser"})
        return [e["message"] for e in entries if e.get("level") == "SEVERE"]  # type: ignore[union-attr]

    def close(self) -> None:
        try:
            self._call("DELETE", self._session)
        finally:
            self._driver.terminate()
            self._driver.wait(10)
            self._http.close()
