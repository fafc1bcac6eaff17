"""The two web apps in a real browser: Debian's chromium driven by Playwright.

Skipped only where /usr/bin/chromium is missing (CI installs it from debian-packages.txt).
Set MELFUSION_SCREENSHOTS=DIR to keep the pages' screenshots."""
import os
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from apps_fixtures import RunningServer, make_generated_sets

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no browser: {CHROMIUM} is not installed"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # gradio's use of pandas options
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
EXAMPLE = Path(__file__).parents[1] / "examples" / "beach-post.png"
# Records every media element the page starts playing (Gradio's player keeps its own off the page).
RECORD_PLAYS = """window.__played = []; const play = HTMLMediaElement.prototype.play;
HTMLMediaElement.prototype.play = function () { window.__played.push(this); return play.apply(this, arguments); };"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, tmp_path, name):
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("MELFUSION_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url():
    """The demo with the default model (the command line's: the shipped one, or the random tiny
    preset where none ships), on 127.0.0.1, with a 0.05 MB upload limit so the size check can be tried."""
    from melfusion.apps.demo import build_demo, launch
    from melfusion.loading import DEFAULT_MODEL_DIR, load_model

    shipped = (DEFAULT_MODEL_DIR / "model_index.json").is_file()
    demo = build_demo(load_model(None), max_upload_mb=0.05, random_weights=not shipped)
    port = free_port()
    launch(demo, "127.0.0.1", port, max_upload_mb=0.05, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def play_until_sounding(page, button, tries: int = 6, wait_ms: int = 5_000):
    """Click Play until a media element's clock moves. The player's button is drawn before its
    audio has loaded, and a click that lands in between is dropped (seen once on a slow CI run);
    a click is repeated only while nothing is playing, so it never pauses what has started."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(tries):
        if not page.evaluate("window.__played.some(a => !a.paused)"):
            button.click()
        try:
            page.wait_for_function("window.__played.some(a => a.currentTime > 0)", timeout=wait_ms)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"no audio played within {tries * wait_ms / 1000:.0f} s of clicking Play "
                         f"(media started: {page.evaluate('window.__played.length')})")


def toasts(page) -> str:
    return " ".join(page.locator("[data-testid='toast-body']").all_inner_texts())


def test_demo_upload_caption_generate_play_and_download(browser, demo_url, tmp_path):
    from melfusion.apps.video import media_info

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.add_init_script(RECORD_PLAYS)
    page.goto(demo_url, wait_until="domcontentloaded")
    page.wait_for_selector("#generate", timeout=60_000)

    # Bad input gets a message in the page: a file that is not an image, then an empty caption.
    notes = tmp_path / "notes.png"
    notes.write_text("this is not a picture")
    page.locator("#image-upload input[type='file']").set_input_files(str(notes))
    page.wait_for_function("document.querySelector('#status').innerText.includes('Cannot use this file')", timeout=20_000)
    assert "not a readable image" in page.locator("#status").inner_text()
    page.locator("#image-upload button[aria-label='Clear']").click()
    page.locator("#image-upload input[type='file']").set_input_files(str(EXAMPLE))
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').innerText.includes('the caption is empty')",
                           timeout=20_000)
    assert "Traceback" not in page.content()
    shot(page, tmp_path, "demo-empty-caption")

    # Good input: generate with the default settings, then play.
    page.locator("#caption textarea").fill("An acoustic folk song for an evening on the beach")
    t0 = time.perf_counter()
    page.click("#generate")
    page.wait_for_selector("#mp4-file a.download-link", timeout=120_000)
    play_until_sounding(page, page.locator("#music button[aria-label='Play']"))
    to_sound = time.perf_counter() - t0
    played = page.evaluate("window.__played.map(a => ({src: a.currentSrc, duration: a.duration}))")
    assert played and played[-1]["duration"] > 0.5 and played[-1]["src"]
    shot(page, tmp_path, "demo-result")

    wav_href = page.locator("#wav-file a.download-link").get_attribute("href")
    mp4_href = page.locator("#mp4-file a.download-link").get_attribute("href")
    (tmp_path / "got.wav").write_bytes(page.request.get(wav_href).body())
    (tmp_path / "got.mp4").write_bytes(page.request.get(mp4_href).body())
    wave, rate = sf.read(str(tmp_path / "got.wav"))
    assert len(wave) > rate // 2 and np.abs(wave).max() > 0.0
    assert played[-1]["duration"] == pytest.approx(len(wave) / rate, abs=0.05)
    info = media_info(tmp_path / "got.mp4")
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["duration"] == pytest.approx(len(wave) / rate, abs=0.1)
    from melfusion.loading import DEFAULT_MODEL_DIR

    model = "shipped default" if (DEFAULT_MODEL_DIR / "model_index.json").is_file() else "random tiny preset"
    print(f"\ndemo: click Generate -> music playing in {to_sound:.2f} s (default model: {model}, "
          f"{len(wave) / rate:.1f} s of audio)")
    page.close()


def test_demo_refuses_an_upload_over_the_size_limit(browser, demo_url, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 0.05 * 2**20
    page = browser.new_page()
    page.goto(demo_url, wait_until="domcontentloaded")
    page.wait_for_selector("#generate", timeout=60_000)
    page.locator("#image-upload input[type='file']").set_input_files(str(big))
    page.wait_for_function("document.body.innerText.match(/max|large|size/i) !== null && "
                           "document.querySelectorAll(\"[data-testid='toast-body']\").length > 0", timeout=20_000)
    assert "Traceback" not in page.content()
    shot(page, tmp_path, "demo-too-large")
    page.close()


def test_a_rater_rates_items_in_the_browser_and_the_rows_are_in_the_database(browser, tmp_path):
    from melfusion.apps.study.build import create_study

    manifest, systems = make_generated_sets(tmp_path / "sets", n_records=2)
    create_study(manifest, systems, tmp_path / "study")
    with RunningServer(tmp_path / "study") as srv:
        context = browser.new_context(viewport={"width": 900, "height": 1000})
        page = context.new_page()
        page.goto(srv.url + "/")
        shot(page, tmp_path, "study-welcome")
        page.click("#start")
        kinds = []
        for k in range(4):
            page.wait_for_selector("#submit")
            audio_ok = page.evaluate("""() => new Promise(r => { const a = document.querySelector('audio');
                if (a.readyState >= 1) r(a.duration); else a.addEventListener('loadedmetadata', () => r(a.duration)); })""")
            assert audio_ok == pytest.approx(0.5, abs=0.01)
            measures = [m for m in ("OVL", "REL", "IMSM") if page.locator(f"input[name='{m}']").count()]
            kinds.append(tuple(measures))
            if k == 0:
                page.click("#submit")  # nothing chosen: the browser's own check keeps the form
                assert page.locator("#submit").count() == 1
            for i, m in enumerate(measures):
                page.check(f"input[name='{m}'][value='{3 + i + k}']")
            page.click("#submit")
        page.wait_for_selector("#submit")
        assert "melfusion" not in page.content() and "tango" not in page.content()  # systems stay hidden
        shot(page, tmp_path, "study-item")
        rater = next(c["value"] for c in context.cookies() if c["name"] == "melfusion_rater")
        context.close()
    con = sqlite3.connect(tmp_path / "study" / "study.sqlite")
    rows = con.execute("SELECT item_id, measure, score, created_at FROM ratings WHERE rater_id = ? ORDER BY id",
                       (rater,)).fetchall()
    assert len(rows) == sum(len(k) for k in kinds)
    assert len({r[0] for r in rows}) == 4 and all(3 <= r[2] <= 10 for r in rows)


def test_demo_bundled_example_fills_image_and_caption(browser, demo_url):
    caption = (Path(__file__).parents[1] / "examples" / "beach-post.txt").read_text().strip()
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(demo_url, wait_until="domcontentloaded")
    page.wait_for_selector("#generate", timeout=60_000)
    page.get_by_text("beach-post.png").last.click()
    page.wait_for_function("document.querySelector('#caption textarea').value.length > 0", timeout=20_000)
    assert page.locator("#caption textarea").input_value() == caption
    page.wait_for_selector("#image-preview img", timeout=20_000)
    page.close()


def test_an_admin_creates_a_study_through_the_create_page(browser, tmp_path):
    """The admin create page in the browser: open it with the token, tick two sets, name them and the
    study, submit, and land on the result page; the new folder is a study with the expected items."""
    from melfusion.apps.study.build import create_study

    manifest, systems = make_generated_sets(tmp_path / "served-sets", n_records=1)
    res = create_study(manifest, systems, tmp_path / "studies" / "served")
    make_generated_sets(tmp_path / "root" / "gen", n_records=2)
    with RunningServer(tmp_path / "studies" / "served", sets_root=tmp_path / "root") as srv:
        page = browser.new_page(viewport={"width": 900, "height": 1100})
        page.goto(f"{srv.url}/admin/create?token={res['token']}")
        page.fill("#name", "from-the-page")
        page.check("#set-0")
        page.check("#set-1")
        page.fill("#system-0", "ours")
        page.uncheck("input[name='task'][value='text']")
        page.fill("#limit", "2")
        shot(page, tmp_path, "study-create-form")
        page.click("#create")
        page.wait_for_selector("#result")
        assert page.locator("#folder").inner_text() == "from-the-page"
        assert page.locator("#items").inner_text() == "8"  # 2 records x 2 systems x 2 tasks
        assert "melfusion study serve" in page.locator("#serve-command").inner_text()
        token = page.locator("#token").inner_text()
        shot(page, tmp_path, "study-create-result")
        page.close()
    new = tmp_path / "studies" / "from-the-page"
    assert (new / "admin-token").read_text().strip() == token
    con = sqlite3.connect(new / "study.sqlite")
    assert {r[0] for r in con.execute("SELECT DISTINCT system FROM items")} == {"ours", "tango"}
