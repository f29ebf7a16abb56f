"""End to end: the real server (uvicorn, in a subprocess, on 127.0.0.1) and the page in headless Chromium.

Uploads a real painting from ../shared/datasets, waits for the bars, checks the top label of every
task against the API's own answer, checks that the heat map appears and that the page fits a phone
screen, then uploads a text file named .jpg and checks the rejection message. Screenshots go to
test-output/serve-e2e/. Uses the shipped default model when it is there, else the tiny test model.

Needs Debian's chromium + chromium-driver (`make browser`) and selenium; skipped without them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output" / "serve-e2e"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def _browser() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless Chromium is not installed (run `make browser`: Debian chromium + chromium-driver)")
    return chromium, driver


def _wait_healthy(proc, base: str, log_path: Path, seconds: float) -> None:
    """Until `base`/healthz answers 200; fails the test (log tail included) if the server exits or
    does not answer within `seconds`."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not answer /healthz within {seconds:g} s; see {log_path}")
        time.sleep(0.5)


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_model_ready() -> bool:
    from artlens import default_model_dir

    return (default_model_dir() / "config.json").is_file() and (default_model_dir() / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, which model) of a running server; stopped (by its pid) after the module."""

    if not (REPO.parent / "shared" / "datasets").is_dir() and not os.environ.get("ARTLENS_SHARED"):
        pytest.skip("../shared/datasets is not there")
    _browser()
    OUT.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    if _default_model_ready():
        cmd = [sys.executable, "-m", "artlens", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
        which = "default"
    else:
        # The tiny colour model, with an index of a few real paintings so the similar strip has content.
        shared = _shared()
        listing = tmp_path_factory.mktemp("index") / "paths.txt"
        picks = [sorted((shared / "wikiart-styles" / s).glob("*.jpg"))[i] for s in ("Ukiyo_e", "Fauvism", "Pop_Art") for i in (0, 1)]
        listing.write_text("\n".join(map(str, picks)) + "\n")
        env["ARTLENS_TINY_INDEX"] = str(listing)
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "artlens.serve.testing:tiny_app",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        which = "tiny"
    log = open(OUT / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base, OUT / "server.log", 240)
        yield base, which
    finally:
        _stop(proc)
        log.close()


def _shared() -> Path:
    return Path(os.environ.get("ARTLENS_SHARED", REPO.parent / "shared")) / "datasets"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--hide-scrollbars", "--force-prefers-reduced-motion"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        yield d
    finally:
        d.quit()


def _viewport(d, width: int, height: int = 900, mobile: bool = False) -> None:
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def _full_page_shot(d, width: int, path: Path, mobile: bool = False) -> None:
    _viewport(d, width, 900, mobile)
    time.sleep(0.3)
    height = d.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
    _viewport(d, width, min(int(height), 6000), mobile)
    time.sleep(0.4)
    d.save_screenshot(str(path))


def test_page_classifies_a_real_painting(server, browser, shared_datasets):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, which = server
    painting = sorted((shared_datasets / "wikiart-styles" / "Baroque").glob("*.jpg"))[3]

    # What the API says about this painting: the page must show the same.
    with painting.open("rb") as fh:
        r = httpx.post(base + "/v1/predict", files={"file": (painting.name, fh, "image/jpeg")}, timeout=120)
    assert r.status_code == 200, r.text
    expected = {task: res["top"][0]["label"] for task, res in r.json()["results"][0]["tasks"].items()}
    # The Grad-CAM model is built in the background at start-up; wait for it (or its failure).
    deadline = time.monotonic() + 300
    while True:
        info = httpx.get(base + "/v1/models", timeout=10).json()
        explain = info["features"]["explain"]
        if explain["ready"] or not explain["available"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    if which == "default":
        assert explain["available"], explain.get("detail")
        assert {"style", "genre", "origin"} <= set(expected)

    d = browser
    _viewport(d, 1280, 1000)
    d.get(base + "/")
    wait = WebDriverWait(d, 240, poll_frequency=0.2)
    wait.until(lambda d: d.execute_script("return document.querySelectorAll('#empty-tasks li').length") > 0)
    d.save_screenshot(str(OUT / "desktop-start.png"))

    d.find_element(By.ID, "file").send_keys(str(painting))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tasks .task[data-top]")) == len(expected))
    shown = {c.get_attribute("data-task"): c.get_attribute("data-top") for c in d.find_elements(By.CSS_SELECTOR, "#tasks .task")}
    assert shown == expected
    first = d.find_element(By.CSS_SELECTOR, "#tasks .task")
    assert len(first.find_elements(By.CSS_SELECTOR, ".bar")) >= 2
    # Bars are drawn to their probability (the fill of the top bar is the widest).
    wait.until(lambda d: d.execute_script(
        "return document.querySelector('#tasks .task .bar-fill').getBoundingClientRect().width") > 0)
    widths = d.execute_script(
        "return [...document.querySelectorAll('#tasks .task')[0].querySelectorAll('.bar-fill')].map(e => e.getBoundingClientRect().width)"
    )
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    # An unsure answer says so.
    for card in d.find_elements(By.CSS_SELECTOR, "#tasks .task.is-unsure"):
        assert card.find_element(By.CSS_SELECTOR, ".badge").text.strip()

    if info["features"]["explain"]["available"]:
        wait.until(lambda d: d.execute_script(
            "const o = document.getElementById('overlay'); return !o.hidden && o.complete && o.naturalWidth > 0"))
        assert d.find_element(By.ID, "overlay").get_attribute("alt").startswith("Heat map")
        # The toggle goes back to the original and forth again.
        d.find_element(By.CSS_SELECTOR, "label[for=view-original]").click()
        assert d.find_element(By.ID, "original").is_displayed() and not d.find_element(By.ID, "overlay").is_displayed()
        d.find_element(By.CSS_SELECTOR, "label[for=view-heat]").click()
        assert d.find_element(By.ID, "overlay").is_displayed()
    if info["features"]["similar"]["available"]:
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar li")) > 0)
        wait.until(lambda d: d.execute_script("return [...document.querySelectorAll('#similar img')].every(i => i.complete && i.naturalWidth > 0)"))

    # Every picture has alternative text (empty only where decorative), the file input has a label.
    assert d.execute_script("return [...document.images].every(i => i.hasAttribute('alt'))")
    assert d.find_elements(By.CSS_SELECTOR, "label[for=file]")
    time.sleep(0.6)  # bar animations
    _full_page_shot(d, 1280, OUT / "desktop-result.png")

    # Phone width: nothing sticks out sideways.
    _full_page_shot(d, 375, OUT / "phone-result.png", mobile=True)
    assert d.execute_script("return document.documentElement.scrollWidth") <= 375
    assert shown == {c.get_attribute("data-task"): c.get_attribute("data-top") for c in d.find_elements(By.CSS_SELECTOR, "#tasks .task")}

    # A rejected upload: a text file named .jpg gets a clear message and the server keeps serving.
    _viewport(d, 1280, 1000)
    fake = OUT / "not-a-picture.jpg"
    fake.write_text("these are notes, not a painting\n" * 20)
    d.find_element(By.ID, "file").send_keys(str(fake))
    wait.until(lambda d: d.find_element(By.ID, "alert").is_displayed())
    alert = d.find_element(By.ID, "alert").text
    assert "not a picture" in alert and "not-a-picture.jpg" in alert, alert
    d.save_screenshot(str(OUT / "desktop-rejected.png"))
    assert httpx.get(base + "/healthz", timeout=10).json()["status"] == "ok"

    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "/v1/" not in e["message"]]
    (OUT / "result.json").write_text(json.dumps({"model": which, "painting": painting.name, "shown": shown,
                                                  "browser_errors": errors}, indent=2))
    assert not errors, errors
