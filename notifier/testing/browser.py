"""Headless Chromium for the console's browser tests and screenshots: Debian's, never a download.

Selenium (a dev dependency) finds and downloads drivers and browsers through
Selenium Manager unless both are given: here they always are
(``/usr/bin/chromium``, ``/usr/bin/chromedriver``, Debian's ``chromium`` and
``chromium-driver`` packages, which ``.ci/run`` installs), and ``SE_OFFLINE``
is set so that even a mistake cannot reach the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["CHROMEDRIVER", "CHROMIUM", "browser_missing", "headless_chromium"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def browser_missing() -> str | None:
    """Why no browser can be driven here (None: it can)."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            return f"{path} is missing (apt-get install {package})"
    return None


def headless_chromium(width: int = 1280, height: int = 900) -> WebDriver:
    """A headless Chromium session of Debian's browser and driver."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
