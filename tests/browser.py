"""Headless Chromium for the viz tests (Debian's chromium + chromedriver, installed by make setup)."""
from __future__ import annotations

import io
import shutil
import time
from typing import Any

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def require_browser() -> None:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium is not installed (make setup installs Debian's chromium and "
                    "chromium-driver when it runs as root)")
    pytest.importorskip("selenium", reason="selenium is a test extra: pip install -e '.[test]'")


def open_browser(width: int = 1500, height: int = 1300):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait_for(driver, script: str, timeout: float = 30.0, what: str = "") -> Any:
    t0 = time.time()
    last = None
    while time.time() - t0 < timeout:
        try:
            last = driver.execute_script(script)
        except Exception as exc:   # noqa: BLE001 - page still loading
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or script}: last {last!r}")


def js_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot_stats(png: bytes) -> tuple[float, int]:
    """Share of pixels that are not background white, and the number of distinct colours."""
    from PIL import Image  # Pillow comes with bokeh
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    non_white = float(np.mean(np.any(img < 245, axis=1)))
    colours = len(np.unique(img[:: max(1, len(img) // 200_000)], axis=0))
    return non_white, colours


BOKEH_READY = ("return (window.Bokeh && Bokeh.documents && Bokeh.documents.length > 0 && "
               "Bokeh.documents[0].roots().length > 0) ? true : false")


def model_js(name: str, expr: str) -> str:
    return (f"const d = Bokeh.documents[0]; const m = d.get_model_by_name('{name}'); "
            f"return m ? {expr} : null;")
