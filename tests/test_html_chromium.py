"""The HTML page in a real browser: headless Chromium opens it from file://, a real mouse click on
a box fills the side panel with that layer's prototxt, the table, search, zoom and downloads
work, and a layer named like a script stays text. Screenshots are saved (to
$LANDMARKNET_SCREENSHOT_DIR when set, else the test's tmp folder).

Skipped when Chromium is absent, unless LANDMARKNET_REQUIRE_CHROMIUM=1 (CI installs it:
``apt-get install -y chromium graphviz``).
"""
from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.render import render
from landmarknet.render.chromium import Chromium, find_chromium

REQUIRE = os.environ.get("LANDMARKNET_REQUIRE_CHROMIUM") == "1"


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        msg = ("Chromium is not installed (apt-get install -y chromium); set "
               "LANDMARKNET_REQUIRE_CHROMIUM=1 to make this a failure")
        if REQUIRE:
            pytest.fail(msg)
        pytest.skip(msg)
    with Chromium(width=1400, height=900) as c:
        yield c


@pytest.fixture
def shots(tmp_path) -> Path:
    d = os.environ.get("LANDMARKNET_SCREENSHOT_DIR")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        return Path(d)
    return tmp_path


@pytest.fixture(scope="module")
def googlenet_page(zoo, tmp_path_factory):
    net = build_net(zoo / "bvlc_googlenet/deploy.prototxt", input_shapes={"data": (1, 3, 224, 224)})
    path = tmp_path_factory.mktemp("html") / "googlenet.html"
    path.write_bytes(render(net, "html"))
    return path


def _center_of(c: Chromium, selector: str, dy: float | None = None) -> tuple[float, float]:
    box = c.eval(f"(() => {{ const r = document.querySelector({selector!r})"
                 ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
    x, y, w, h = box
    return x + w / 2, y + (h / 2 if dy is None else dy)


def _row_index(c: Chromium, name: str) -> int:
    return c.eval(f"lnet.rows.findIndex(r => r.name === {name!r})")


def test_click_a_box_shows_its_prototxt(browser, googlenet_page, shots):
    c = browser
    c.open(googlenet_page)
    assert c.eval("document.querySelectorAll('#lnet-svg g.node').length") > 60
    i = _row_index(c, "inception_3a/3x3")
    node = c.eval(f"lnet.rows[{i}].node")
    c.eval(f"lnet.centerOn({node!r})")
    assert c.eval("document.getElementById('panel-body').hidden") is True
    x, y = _center_of(c, f"g.node[data-node='{node}']", dy=10)  # on the title, not a sub-row
    c.click(x, y)
    assert c.eval("document.getElementById('p-name').textContent") == "inception_3a/3x3"
    proto = c.eval("document.getElementById('p-proto').textContent")
    assert 'name: "inception_3a/3x3"' in proto and "num_output: 128" in proto
    assert "kernel_size: 3" in proto and "pad: 1" in proto
    kv = c.eval("document.getElementById('p-kv').textContent")
    assert "1x96x28x28" in kv and "1x128x28x28" in kv  # bottom and top shapes
    assert "86,704,128" in kv  # MACs: 28*28*128 outputs x 96*3*3
    assert "110,720" in kv  # params: 128*96*3*3 + 128
    assert c.eval(f"document.getElementById({node!r}).classList.contains('sel')")
    assert c.eval("document.querySelector('#layers tr.sel td.nm').textContent") == \
        "inception_3a/3x3"
    shot = c.screenshot(shots / "googlenet_click.png")
    assert shot.stat().st_size > 20_000
    assert c.console_errors() == []


def test_sub_rows_and_table_rows_select_layers(browser, googlenet_page):
    c = browser
    c.open(googlenet_page)
    i = _row_index(c, "inception_3a/relu_3x3")
    node = c.eval(f"lnet.rows[{i}].node")
    c.eval(f"lnet.centerOn({node!r})")
    c.click(*_center_of(c, f".sub[data-row='{i}']"))
    assert c.eval("document.getElementById('p-name').textContent") == "inception_3a/relu_3x3"
    assert "Drawn inside" in c.eval("document.getElementById('p-folded').textContent")
    # a click on a table row selects the box and centres it
    j = _row_index(c, "loss3/classifier")
    c.eval(f"document.querySelectorAll('#layers tbody tr')[{j}].scrollIntoView({{block: 'center'}})")
    c.click(*_center_of(c, f"#layers tbody tr:nth-child({j + 1})"))
    assert c.eval("document.getElementById('p-name').textContent") == "loss3/classifier"
    target = c.eval(f"lnet.rows[{j}].node")
    assert c.eval(f"document.getElementById({target!r}).classList.contains('sel')")
    # sorting by MACs, descending on the second click: the biggest layer comes first
    c.eval("document.querySelector('#layers th[data-k=macs]').scrollIntoView()")
    for _ in range(2):
        c.click(*_center_of(c, "#layers th[data-k=macs]"))
    first = c.eval("document.querySelector('#layers tbody tr td.nm').textContent")
    biggest = c.eval("lnet.rows.reduce((a, r) => r.macs > a.macs ? r : a).name")
    assert first == biggest


def test_search_zoom_pan_and_downloads(browser, googlenet_page):
    c = browser
    c.open(googlenet_page)
    c.eval("const s = document.getElementById('search'); s.value = 'inception_4e/5x5';"
           "s.dispatchEvent(new Event('input'))")
    hits = c.eval("document.getElementById('hits').textContent")
    # names, types and blobs: 5x5_reduce, relu_5x5_reduce, 5x5, relu_5x5 and the concat
    # 'inception_4e/output' that reads the blob inception_4e/5x5; three boxes hold them
    assert hits == "5 matches"
    assert c.eval("document.querySelectorAll('#lnet-svg g.node.match').length") == 3
    assert c.eval("Array.from(document.querySelectorAll('#layers tbody tr'))"
                  ".filter(tr => tr.style.display !== 'none').length") == 5
    c.eval("document.getElementById('search').dispatchEvent(new KeyboardEvent('keydown', "
           "{key: 'Enter'}))")
    assert c.eval("document.getElementById('p-name').textContent").startswith("inception_4e/5x5")
    before = c.eval("lnet.view.k")
    x, y = _center_of(c, "#canvas")
    c.call("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": x, "y": y, "deltaX": 0,
                                        "deltaY": -300}, session=True)
    assert c.eval("lnet.view.k") > before * 1.2
    vx = c.eval("lnet.view.x")
    c.call("Input.dispatchMouseEvent", {"type": "mousePressed", "x": x, "y": y,
                                        "button": "left", "clickCount": 1}, session=True)
    c.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x + 120, "y": y + 40,
                                        "button": "left"}, session=True)
    c.call("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": x + 120, "y": y + 40,
                                        "button": "left", "clickCount": 1}, session=True)
    assert abs(c.eval("lnet.view.x") - vx - 120) < 1
    href = c.eval("document.getElementById('dl-csv').href")
    assert href.startswith("data:text/csv")
    csv_text = urllib.parse.unquote(href.split(",", 1)[1])
    assert csv_text.splitlines()[0].startswith("index,layer,type")
    assert c.eval("document.getElementById('dl-json').getAttribute('download')") == \
        "GoogleNet.json"


EVIL_NAMES = ["<script>window.__pwned=1</script>", "<img src=x onerror=window.__pwned=2>",
              "<svg onload=window.__pwned=3>"]


def test_script_named_layers_render_as_text(browser, tmp_path, shots):
    c = browser
    layers = []
    prev = "data"
    for k, name in enumerate(EVIL_NAMES):
        layers.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{prev}" '
                      f'top: "t{k}" convolution_param {{ num_output: 2 kernel_size: 1 }} }}')
        prev = f"t{k}"
    text = ('name: "<b>evil</b>"\ninput: "data" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }\n'
            + "\n".join(layers))
    net = build_net(parse_net(text, path="evil.prototxt"))
    page = tmp_path / "evil.html"
    page.write_bytes(render(net, "html"))
    c.open(page)
    assert c.eval("typeof window.__pwned") == "undefined"
    assert c.eval("document.querySelectorAll('img, b, #lnet-svg svg').length") == 0
    assert c.eval("document.querySelectorAll('script').length") == 2
    titles = c.eval("Array.from(document.querySelectorAll('#lnet-svg text.t'))"
                    ".map(t => t.textContent)")
    assert EVIL_NAMES[0] in titles
    i = _row_index(c, EVIL_NAMES[1])
    node = c.eval(f"lnet.rows[{i}].node")
    c.click(*_center_of(c, f"g.node[data-node='{node}']", dy=10))
    assert c.eval("document.getElementById('p-name').textContent") == EVIL_NAMES[1]
    assert f'name: "{EVIL_NAMES[1]}"' in c.eval("document.getElementById('p-proto').textContent")
    assert c.eval("document.querySelector('h1').textContent") == "<b>evil</b>"
    assert c.eval("typeof window.__pwned") == "undefined"
    assert c.console_errors() == []
    c.screenshot(shots / "evil.png")


def test_shipped_heatmap_net_screenshot(browser, tmp_path, shots):
    path = Path(__file__).resolve().parent.parent / "prototxt/heatmap4_68/deploy.prototxt"
    if not path.exists():
        pytest.skip(f"{path} is not generated yet (tools/generate_prototxt.py)")
    page = tmp_path / "heatmap4_68.html"
    page.write_bytes(render(build_net(path), "html"))
    browser.open(page)
    i = _row_index(browser, "stage2_conv1") if _row_index(browser, "stage2_conv1") >= 0 else 1
    browser.eval(f"lnet.select({i}, true)")
    assert browser.eval("document.getElementById('p-proto').textContent").startswith("layer {")
    assert browser.console_errors() == []
    assert browser.screenshot(shots / "heatmap4_68.png").stat().st_size > 20_000
