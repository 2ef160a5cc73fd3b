"""The demo app end to end: `mclstexp app` serves it, headless Chromium drives it.

The app runs in a subprocess on a free port with the synthetic checkpoint; selenium uploads the
synthetic slide and spots CSV, clicks Run, waits for the gene map, downloads the `.h5ad` and
opens it with anndata. Bad uploads must show a message on the page, never a traceback.

Needs gradio + selenium (the `dev` extra) and the Debian packages chromium + chromium-driver
(`.ci/run` installs them); skips with the reason when one is missing. Waits are explicit (no
wall-clock assertions). `MCLSTEXP_APP_SCREENSHOT=docs/img/app.png` also saves the screenshot
there (how the README's picture was made).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
STARTUP_TIMEOUT_S = 300  # generous: 2 shared cores, gradio + torch imports
RUN_TIMEOUT_S = 600
UI_TIMEOUT_S = 120


def _missing() -> list[str]:
    missing = [f"python package {name} (pip install -e '.[dev]')" for name in ("gradio", "selenium")
               if importlib.util.find_spec(name) is None]
    missing += [f"{path} (apt-get install chromium chromium-driver)" for path in (CHROMIUM, CHROMEDRIVER)
                if not os.access(path, os.X_OK)]
    return missing


@pytest.fixture(scope="module")
def browser_requirements() -> None:
    missing = _missing()
    if missing:
        pytest.skip("demo-app browser test needs " + "; ".join(missing))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def app_url(browser_requirements, synthetic, tmp_path_factory):
    """`mclstexp app` with the synthetic checkpoint on a free port; its URL while it runs."""
    root = tmp_path_factory.mktemp("app_server")
    port = _free_port()
    env = {**os.environ, "MCLSTEXP_APP_WORK_DIR": str(root / "work"), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(root / "gradio"),
           "PYTHONUNBUFFERED": "1"}
    log_path = root / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mclstexp_hub.cli", "app", "--model", str(synthetic.checkpoint),
         "--port", str(port), "--host", "127.0.0.1", "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`mclstexp app` exited ({proc.returncode}):\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`mclstexp app` did not answer on {url}:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print(f"app server log ({log_path}):\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app_downloads")


@pytest.fixture(scope="module")
def driver(browser_requirements, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1500", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    browser = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield browser
    finally:
        browser.quit()


def _wait(driver, timeout=UI_TIMEOUT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5)


def _open(driver, url):
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#run"))


def _upload(driver, elem_id: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]")
    field.send_keys(str(path))
    _wait(driver).until(lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#{elem_id} td.filename[aria-label="{path.name}"]'))


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def _image_src(driver, elem_id: str) -> str | None:
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
    return (images[0].get_attribute("src") or None) if images else None


def _run_and_wait_for_status(driver, before: str) -> str:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "run").click()
    _wait(driver, RUN_TIMEOUT_S).until(lambda d: _status(d) != before and (
        "spots ×" in _status(d) or "Error" in _status(d)))
    return _status(driver)


def _screenshot(driver, path: Path) -> Path:
    """The whole page (the window grown to the document's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(900, min(int(height) + 40, 4000)))
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"could not save the screenshot {path}"
    return path


def test_app_predicts_and_downloads(app_url, driver, downloads, synthetic, tmp_path):
    """Upload slide + spots, Run: gene map, domains, download a readable pred.h5ad."""
    import anndata as ad
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(driver, app_url)
    model_box = driver.find_element(By.CSS_SELECTOR, "#model textarea, #model input")
    assert model_box.get_attribute("value") == str(synthetic.checkpoint)
    _upload(driver, "image", synthetic.image)
    _upload(driver, "spots", synthetic.spots_csv)
    status = _run_and_wait_for_status(driver, _status(driver))
    assert "Error" not in status, status
    assert f"{len(synthetic.spots)} spots × {len(synthetic.genes)} genes" in status, status
    _wait(driver).until(lambda d: _image_src(d, "gene-map"))
    _wait(driver).until(lambda d: _image_src(d, "domains-map"))
    box = driver.find_element(By.CSS_SELECTOR, "#gene input")
    chosen = box.get_attribute("value")
    assert chosen in synthetic.genes
    assert _image_src(driver, "gene-map").endswith(f"gene_{chosen}.png")
    # another gene from the dropdown redraws the map
    other = next(g for g in synthetic.genes if g != chosen)
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(other)
    box.send_keys(Keys.ENTER)
    _wait(driver).until(lambda d: (_image_src(d, "gene-map") or "").endswith(f"gene_{other}.png"))

    # download the .h5ad through the page's link
    link = _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#download a[href]"))
    name = driver.find_element(By.CSS_SELECTOR, "#download td.filename").get_attribute("aria-label")
    assert name == f"{synthetic.image.stem}_pred.h5ad", name
    link[0].click()

    def downloaded(_):
        done = downloads / name
        partial = list(downloads.glob("*.crdownload"))
        return done if done.is_file() and done.stat().st_size > 0 and not partial else None

    path = _wait(driver, UI_TIMEOUT_S).until(downloaded)
    adata = ad.read_h5ad(path)
    assert adata.shape == (len(synthetic.spots), len(synthetic.genes))
    assert list(adata.var_names) == synthetic.genes
    assert sorted(adata.obs_names) == sorted(synthetic.spots["spot_id"].astype(str))
    assert "mclstexp_domain" in adata.obs  # the domains shown are in the download
    assert adata.obsm["spatial"].shape[0] == adata.n_obs and adata.uns["spatial"]

    # the neighbour_spread panel appears exactly when the prediction carries neighbour_spread
    has_neighbour_spread = "neighbour_spread" in adata.layers or "neighbour_spread" in adata.obs
    panel = driver.find_elements(By.CSS_SELECTOR, "#neighbour_spread-map")
    visible = bool(panel) and panel[0].is_displayed() and bool(_image_src(driver, "neighbour_spread-map"))
    assert visible == has_neighbour_spread

    shot = _screenshot(driver, tmp_path / "app.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MCLSTEXP_APP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["MCLSTEXP_APP_SCREENSHOT"])


def test_app_shows_errors_not_tracebacks(app_url, driver, synthetic, tmp_path):
    """A spots CSV without pixel columns and an undecodable image: a message, no traceback."""
    from selenium.webdriver.common.by import By

    bad_csv = tmp_path / "bad_spots.csv"
    bad_csv.write_text("a,b\n1,2\n")
    bad_image = tmp_path / "not_an_image.jpg"
    bad_image.write_bytes(b"this is not a JPEG")

    _open(driver, app_url)
    _upload(driver, "image", synthetic.image)
    _upload(driver, "spots", bad_csv)
    status = _run_and_wait_for_status(driver, _status(driver))
    assert "Error" in status and "pixel_x" in status and "bad_spots.csv" in status, status
    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text

    _open(driver, app_url)
    _upload(driver, "image", bad_image)
    _upload(driver, "spots", synthetic.spots_csv)
    status = _run_and_wait_for_status(driver, _status(driver))
    assert "Error" in status and "not_an_image.jpg" in status, status
    assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    assert not _image_src(driver, "gene-map")


def test_neighbour_spread_panel_when_present(synthetic, tmp_path):
    """No browser: the panel is drawn from obs/layers['neighbour_spread'] and absent without them."""
    import numpy as np

    from mclstexp_hub.app import core

    run = core.run_prediction(str(synthetic.checkpoint), synthetic.image, core.SPOTS_CSV,
                              synthetic.spots_csv, 3, device="cpu", work_dir=tmp_path)
    adata = run.adata
    assert run.h5ad.is_file() and run.domains_png and run.domains_png.is_file()
    assert core.gene_map(run, run.default_gene).is_file()
    if "neighbour_spread" in adata.obs:  # drop what the model may give, then add each kind
        del adata.obs["neighbour_spread"]
    adata.layers.pop("neighbour_spread", None)
    assert core.neighbour_spread_map(run, run.default_gene) is None
    adata.layers["neighbour_spread"] = np.abs(np.asarray(adata.X)) * 0.1
    values, title = core.neighbour_spread_values(adata, run.default_gene)
    assert values.shape == (adata.n_obs,) and run.default_gene in title
    assert core.neighbour_spread_map(run, run.default_gene).is_file()
    adata.obs["neighbour_spread"] = np.linspace(0, 1, adata.n_obs)
    values, title = core.neighbour_spread_values(adata)
    assert np.allclose(values, np.linspace(0, 1, adata.n_obs)) and "per-spot" in title
    with pytest.raises(ValueError, match="spots CSV"):
        core.run_prediction(str(synthetic.checkpoint), synthetic.image, core.SPOTS_CSV, None,
                            work_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.folder.name]  # failures leave none
