"""End to end: `artlens serve --collection DIR` on a small museum folder of real paintings (links into
../shared/datasets/wikiart-styles), with the shipped model and the offline CLIP weights, then the
page in headless Chromium: a painting dropped on it shows five or more neighbour thumbnails (by id,
from /v1/collection/{id}/thumb) with their similarity and style labels. A restart after one file is
added embeds only that file. Screenshots go to test-output/serve-collection-e2e/.

Needs the CLIP weights, Debian's chromium + chromium-driver and selenium; skipped without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_serve_e2e import (_browser, _default_model_ready, _free_port, _full_page_shot, _stop,
                                              _viewport, _wait_healthy)

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output" / "serve-collection-e2e"
STYLES = ("Ukiyo_e", "Fauvism", "Pop_Art", "Baroque")

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def _museum(shared: Path, root: Path, per_style: int = 3) -> list[Path]:
    """root/<Style>/<painting>.jpg links; the paintings left out, one per style, for queries."""
    spare = []
    for style in STYLES:
        files = sorted((shared / "wikiart-styles" / style).glob("*.jpg"))[: per_style + 1]
        (root / style).mkdir(parents=True, exist_ok=True)
        for f in files[:per_style]:
            (root / style / f.name).symlink_to(f)
        spare.append(files[per_style])
    return spare


def _serve(museum: Path, log_path: Path):
    """(process, base URL, stderr text once /healthz answers)."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "artlens", "serve", "--collection", str(museum), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "2", "--log-level", "warning"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base, log_path, 300)
    except BaseException:
        _stop(proc)
        log.close()
        raise
    log.flush()
    return proc, base, log


def test_page_shows_the_collection_neighbours(shared_datasets, clip_weights, tmp_path):
    import httpx
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not _default_model_ready():
        pytest.skip("the shipped default model is not built")
    chromium, driver = _browser()
    OUT.mkdir(parents=True, exist_ok=True)
    museum = tmp_path / "museum"
    spare = _museum(shared_datasets, museum)
    query = spare[0]  # an Ukiyo-e painting the collection does not hold

    proc, base, log = _serve(museum, OUT / "server-1.log")
    try:
        started = (OUT / "server-1.log").read_text()
        assert re.search(r"collection index updated: 12 images \(\+12 new, 0 kept, -0 removed\)", started), started
        info = httpx.get(base + "/v1/models", timeout=10).json()
        assert info["features"]["similar"]["available"] and info["index"]["size"] == 12
        assert info["index"]["collection"] == "museum"
        with query.open("rb") as fh:
            r = httpx.post(base + "/v1/similar?k=5", files={"file": (query.name, fh, "image/jpeg")}, timeout=120)
        assert r.status_code == 200, r.text
        api = r.json()["results"]
        assert len(api) == 5 and all(n["labels"]["style"] in STYLES for n in api)
        assert str(museum) not in r.text

        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", "--hide-scrollbars", "--force-prefers-reduced-motion"):
            opts.add_argument(arg)
        d = webdriver.Chrome(service=Service(driver), options=opts)
        try:
            _viewport(d, 1280, 1000)
            d.get(base + "/")
            wait = WebDriverWait(d, 240, poll_frequency=0.2)
            wait.until(lambda d: d.execute_script("return document.querySelectorAll('#empty-tasks li').length") > 0)
            assert "museum" in d.find_element(By.ID, "similar-title").get_attribute("textContent")
            d.find_element(By.ID, "file").send_keys(str(query))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar li")) >= 5)
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#similar img')].every(i => i.complete && i.naturalWidth > 0)"))
            thumbs = d.find_elements(By.CSS_SELECTOR, "#similar li img")
            assert len(thumbs) >= 5
            assert all(re.search(r"/v1/collection/\d+/thumb$", t.get_attribute("src")) for t in thumbs)
            assert all(0 < int(t.get_attribute("naturalWidth")) <= 160 for t in thumbs)
            captions = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#similar li")]
            assert all("similar" in c for c in captions), captions
            styles = {s.replace("_", " ") for s in STYLES}
            assert all(any(s in c for s in styles) for c in captions), captions  # each shows its style label
            # the page's first neighbour is the API's (the page asks for the same default mode)
            assert d.find_element(By.CSS_SELECTOR, "#similar li").get_attribute("data-row") == str(api[0]["row"])
            # another search mode from the menu: the strip is asked again
            from selenium.webdriver.support.ui import Select

            assert "artist" in info["index"]["modes"]
            Select(d.find_element(By.ID, "similar-by")).select_by_value("artist")
            wait.until(lambda d: "by artist" in d.find_element(By.ID, "similar-hint").text)
            assert len(d.find_elements(By.CSS_SELECTOR, "#similar li img")) >= 5
            _full_page_shot(d, 1280, OUT / "desktop-neighbours.png")
            _full_page_shot(d, 375, OUT / "phone-neighbours.png", mobile=True)
            assert d.execute_script("return document.documentElement.scrollWidth") <= 375  # nothing sticks out
        finally:
            d.quit()
    finally:
        _stop(proc)
        log.close()

    # one painting added: the restart embeds it alone
    shutil.copy(spare[1], museum / "Fauvism" / spare[1].name)
    proc, base, log = _serve(museum, OUT / "server-2.log")
    try:
        started = (OUT / "server-2.log").read_text()
        assert "collection index updated: 13 images (+1 new, 12 kept, -0 removed)" in started, started
        assert httpx.get(base + "/v1/models", timeout=10).json()["index"]["size"] == 13
    finally:
        _stop(proc)
        log.close()
