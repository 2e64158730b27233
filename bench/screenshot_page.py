"""Screenshots of serve.py's page in headless chromium, for the README.

    python bench/screenshot_page.py --model models/genre-classifier

Starts serve.py on a free port, types a description into the page, tags it, and saves the page as
docs/serve-page.png (desktop width) and docs/serve-page-phone.png (a 390 px wide phone screen). Needs
Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) and selenium
(requirements-dev.txt).
"""

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder or .zip (default: %(default)s)")
    p.add_argument(
        "--description",
        default="A retired hitman seeks revenge on the gangsters who killed his dog.",
        help="what the screenshot tags (default: %(default)s)",
    )
    p.add_argument(
        "--threshold",
        default=None,
        help="move the slider to this threshold for the screenshot (default: the run's default decisions)",
    )
    p.add_argument("--output", default="docs", help="folder for the PNG files (default: %(default)s)")
    args = p.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "serve.py", "--model", args.model, "--port", str(port)], cwd=ROOT, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = None
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/readyz", timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        for name, width in (("serve-page.png", 900), ("serve-page-phone.png", 390)):
            driver.set_window_size(width, 1000)
            driver.get(url + "/")
            driver.find_element(By.ID, "description").send_keys(args.description)
            driver.find_element(By.ID, "submit").click()
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bars li"))
            if args.threshold is not None:
                driver.execute_script(
                    "const s = document.getElementById('threshold'); s.value = arguments[0];"
                    " s.dispatchEvent(new Event('input'));",
                    args.threshold,
                )
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.execute_cdp_cmd(  # the whole page in one picture, not only the window
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500},
            )
            path = Path(args.output) / name
            driver.save_screenshot(str(path))
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            print(f"wrote {path}")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
