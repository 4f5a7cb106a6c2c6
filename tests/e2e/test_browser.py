"""End to end: the real app (`streamlit run app.py`) in headless Debian Chromium.

Open the map, switch pages, select a task on the map, upload a small dataset and see its
neighbours, export a figure. Screenshots go to artifacts/e2e/ (git-ignored).
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from conftest import APP_DIGIT_PAIRS, APP_FASHION_PAIRS
from e2e.server import CHROMIUM, CHROMIUM_ARGS, ROOT, streamlit_server

pytestmark = pytest.mark.browser
ARTIFACTS = ROOT / "artifacts" / "e2e"
N_TASKS = len(APP_DIGIT_PAIRS) + len(APP_FASHION_PAIRS)
SLOW = 180_000  # ms: generous waits for a loaded 2-core machine (not a speed assertion)


@pytest.fixture(scope="module")
def server(app_library):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(app_library, log=ARTIFACTS / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def app_page(chromium, server):
    context = chromium.new_context(viewport={"width": 1600, "height": 2200}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(SLOW)
    yield page
    context.close()


def charts(page):
    return page.locator('[data-testid="stPlotlyChart"]')


def open_map(page, url: str, query: str = ""):
    page.goto(f"{url}/{query}")
    expect(charts(page)).to_have_count(2, timeout=SLOW)
    expect(charts(page).first.locator(".scatterlayer .point")).to_have_count(N_TASKS, timeout=SLOW)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_open_the_map_and_switch_pages(app_page, server):
    page = app_page
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    open_map(app_page, server)
    expect(page.get_by_text(f"{N_TASKS} tasks in 2 families")).to_be_visible()
    expect(charts(page).nth(1).locator(".scatterlayer .point")).to_have_count(N_TASKS)
    shot(page, "01-task-map")
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_text("Taxonomy").click()
    expect(page.get_by_text("Spearman ρ (TASK2VEC vs taxonomy)")).to_be_visible(timeout=SLOW)
    expect(page).to_have_url(re.compile(r"/taxonomy\?.*db="))
    shot(page, "02-taxonomy")
    nav.get_by_text("Difficulty").click()
    expect(page.get_by_text("This library has no experts yet", exact=False)).to_be_visible()
    shot(page, "03-difficulty")
    nav.get_by_text("Model selection").click()
    expect(page.get_by_text("This library has no experts yet", exact=False)).to_be_visible()
    # nothing is fetched from anywhere but the app's own server (offline machines, privacy)
    outside = [u for u in requests if not u.startswith((server, "data:", "blob:"))]
    assert requests and not outside, outside


# Plotly's selection event for another task than `task` on the domain map, as a click sends it;
# returns that task and the rings on both maps right after the event's handlers ran.
SELECT_ON_DOMAIN_MAP = """task => {
  const maps = [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')].slice(0, 2);
  const trace = maps[1].data.find(t => t.meta === 'tasks');
  const i = trace.customdata.findIndex(c => c[0] !== task);
  maps[1].emit('plotly_selected', {points: [{data: trace, customdata: trace.customdata[i]}]});
  const rings = maps.map(m => [...m.querySelectorAll('g.task2vec-rings circle')].map(c => c.getAttribute('data-task')));
  return [trace.customdata[i][0], rings];
}"""


def test_select_a_task_on_the_map_opens_its_card(app_page, server):
    page = app_page
    open_map(app_page, server)
    point = charts(page).first.locator(".scatterlayer .point").first
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)  # plotly picks the clicked point from the hover under the pointer
    page.wait_for_timeout(300)
    page.mouse.click(x, y)
    card = page.locator('[data-testid="stHeadingWithActionElements"] h3')
    expect(card).to_have_count(1, timeout=SLOW)
    name = card.inner_text()
    assert re.fullmatch(r"(digits|fashion) \d vs \d", name), name
    expect(page).to_have_url(re.compile(r"task=(digits|fashion)%2F\d-vs-\d"))
    expect(page.get_by_text("Nearest tasks")).to_be_visible()
    expect(page.locator('[data-testid="stTable"]').first).to_contain_text(re.compile(r"\d\.\d{4}"))
    expect(page.locator('[data-testid="stImage"] img')).to_have_count(6)  # thumbnails
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    # the same task is ringed on both maps (linked views), the other tasks dimmed
    task = re.search(r"task=([^&]+)", page.url).group(1).replace("%2F", "/")
    for k in (0, 1):
        expect(charts(page).nth(k).locator("g.task2vec-rings circle")).to_have_count(1)
        assert charts(page).nth(k).locator("g.task2vec-rings circle").get_attribute("data-task") == task
        expect(charts(page).nth(k).locator(".scatterlayer .trace").first).to_have_css("opacity", "0.35")
    # a new colouring redraws both maps (new chart elements): the selection stays ringed
    page.get_by_label("Colour by").click()
    page.get_by_role("option", name="size (training images)").click()
    expect(page.locator(".colorbar")).to_have_count(2, timeout=SLOW)
    for k in (0, 1):
        expect(charts(page).nth(k).locator(f'g.task2vec-rings circle[data-task="{task}"]')).to_have_count(1)
    expect(card).to_have_text(name)
    shot(page, "04-task-card")
    # the link reopens the same view
    link = page.url
    page.goto(link)
    expect(page.locator('[data-testid="stHeadingWithActionElements"] h3')).to_have_text(name, timeout=SLOW)
    for k in (0, 1):
        expect(charts(page).nth(k).locator(f'g.task2vec-rings circle[data-task="{task}"]')).to_have_count(1)
    # a selection on one map is ringed on both in the same browser task, before the server's
    # rerun (which then opens the card)
    other, ringed = page.evaluate(SELECT_ON_DOMAIN_MAP, task)
    assert other != task and ringed == [[other], [other]]
    expect(page.locator('[data-testid="stCaptionContainer"] code').first).to_have_text(other, timeout=SLOW)


def test_upload_a_small_dataset_and_see_its_neighbours(app_page, server, digits, tmp_path):
    page = app_page
    images, labels = digits
    archive = tmp_path / "sevens-and-ones.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for k in range(500, 700):
            if labels[k] in (1, 7):
                png = io.BytesIO()
                Image.fromarray(images[k]).save(png, format="PNG")
                zf.writestr(f"task/{labels[k]}/{k}.png", png.getvalue())
    page.goto(f"{server}/upload")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(archive))
    expect(page.get_by_text("sevens-and-ones.zip")).to_be_visible()
    page.get_by_label("Task name").fill("sevens and ones")
    page.get_by_role("button", name="Embed and place").click()
    expect(page.get_by_text("Nearest library tasks")).to_be_visible(timeout=SLOW)
    expect(page.get_by_text(re.compile(r"sevens and ones: \d+ images, 2 classes"))).to_be_visible()
    table = page.locator('[data-testid="stTable"]').first
    expect(table).to_contain_text(re.compile(r"(digits|fashion) \d vs \d"))
    expect(charts(page).first.locator(".scatterlayer .point")).to_have_count(N_TASKS + 5 + 1)
    shot(page, "05-upload")


def test_a_first_upload_in_one_click_with_the_example(app_page, server):
    """A new user without a dataset: one click embeds the ready example and shows the result."""
    page = app_page
    page.goto(f"{server}/upload")
    page.get_by_role("button", name=re.compile("Try an example")).click()
    expect(page.get_by_text("Nearest library tasks")).to_be_visible(timeout=SLOW)
    expect(page.get_by_text("Fashion-MNIST footwear (example): 180 images, 3 classes")).to_be_visible()
    table = page.locator('[data-testid="stTable"]').first
    expect(table.locator("tbody tr").first).to_contain_text(re.compile(r"fashion (5 vs 7|7 vs 9)"))
    expect(charts(page).first.locator(".scatterlayer .point")).to_have_count(N_TASKS + 5 + 1)
    shot(page, "06-upload-example")


def test_export_a_figure_as_png_and_svg(app_page, server):
    page = app_page
    open_map(app_page, server)
    with page.expect_download(timeout=SLOW) as info:
        page.get_by_role("button", name="PNG").first.click()
    png = Path(info.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert info.value.suggested_filename.endswith(".png")
    (ARTIFACTS / "export-task-map.png").write_bytes(png)
    with page.expect_download(timeout=SLOW) as info:
        page.get_by_role("button", name="SVG").first.click()
    svg = Path(info.value.path()).read_text()
    assert svg.startswith("<svg") and "Task space" in svg
    with page.expect_download(timeout=SLOW) as info:
        page.get_by_role("button", name=re.compile("Figure pack")).click()
    pack = zipfile.ZipFile(info.value.path())
    assert len([n for n in pack.namelist() if n.endswith(".svg")]) == 2
