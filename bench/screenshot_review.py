"""A screenshot of serve.py's review page (/review) in headless chromium, for docs/REVIEW.md.

    python bench/screenshot_review.py --model models/genre-classifier

Imports --input into a temporary review store with the run, starts `serve.py --review` on a free port,
opens the page as reviewer "ann" and saves it as docs/review-page.png. Needs Debian's chromium and
chromium-driver and selenium (requirements-dev.txt), as bench/screenshot_page.py.
"""

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/genre-classifier", help="run folder or .zip (default: %(default)s)")
    p.add_argument("--input", default="data/IMDB-Movie-Data.csv", help="titles to import (default: %(default)s)")
    p.add_argument("--output", default="docs/review-page.png", help="PNG to write (default: %(default)s)")
    args = p.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    work = Path(tempfile.mkdtemp(prefix="review-screenshot-"))
    db = work / "review.sqlite"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "genre_tagger.review",
            "import",
            "--db",
            db,
            "--model",
            args.model,
            "--input",
            args.input,
        ],
        cwd=ROOT,
        check=True,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "serve.py", "--model", args.model, "--port", str(port), "--review", str(db)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
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
        driver.set_window_size(900, 1000)
        driver.get(url + "/review")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#toggles li"))
        driver.find_element(By.ID, "reviewer").send_keys("ann", Keys.ENTER)
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.execute_cdp_cmd(  # the whole page in one picture, not only the window
            "Emulation.setDeviceMetricsOverride",
            {"width": 900, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.save_screenshot(args.output)
        print(f"wrote {args.output}")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
