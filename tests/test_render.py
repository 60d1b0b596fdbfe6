"""Drawing: both layout engines give valid, non-overlapping drawings; every output format; text
from a prototxt is always escaped (a layer named <script>...</script> renders as text)."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from landmarknet.analyze import analyze
from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.cli import main as cli_main
from landmarknet.render import FORMATS, draw, render
from landmarknet.render import layout as layout_mod
from landmarknet.render.html import json_for_script
from landmarknet.render.layout import LEdge, LNode, builtin_layout, dot_available
from landmarknet.render.svg import render_svg

SVG_NS = "{http://www.w3.org/2000/svg}"
ENGINES = ["builtin"] + (["dot"] if dot_available() else [])

EVIL_NAME = "<script>alert(1)</script>"
EVIL_BLOB = "</script><img src=x onerror=alert(2)>"
EVIL = f"""name: "evil & <b>bold</b>"
input: "data" input_shape {{ dim: 1 dim: 3 dim: 8 dim: 8 }}
layer {{ name: "{EVIL_NAME}" type: "Convolution" bottom: "data" top: "{EVIL_BLOB}"
        convolution_param {{ num_output: 4 kernel_size: 3 }} }}
layer {{ name: "relu ' & <i>" type: "ReLU" bottom: "{EVIL_BLOB}" top: "{EVIL_BLOB}" }}
layer {{ name: "=cmd|' /C calc'!A0" type: "Pooling" bottom: "{EVIL_BLOB}" top: "p"
        pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} }}
"""

SMALL = """name: "small"
input: "data" input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "a/1x1" type: "Convolution" bottom: "conv1" top: "a1" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "a/3x3" type: "Convolution" bottom: "conv1" top: "a3" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "a/pool" type: "Pooling" bottom: "conv1" top: "ap" pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "a/cat" type: "Concat" bottom: "a1" bottom: "a3" bottom: "ap" top: "a" }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "a" top: "s" }
layer { name: "fc" type: "InnerProduct" bottom: "s" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def wide_net(blocks: int = 30) -> str:
    """An inception-like net of 10 layers per block (300 layers for 30 blocks)."""
    lines = ['name: "wide"', 'input: "data" input_shape { dim: 1 dim: 4 dim: 8 dim: 8 }']
    prev = "data"
    for b in range(blocks):
        outs = []
        for k in range(4):
            n = f"b{b}/branch{k}"
            lines.append(f'layer {{ name: "{n}" type: "Convolution" bottom: "{prev}" top: "{n}" '
                         'convolution_param { num_output: 1 kernel_size: 1 } }')
            lines.append(f'layer {{ name: "{n}/relu" type: "ReLU" bottom: "{n}" top: "{n}" }}')
            if k == 3:
                lines.append(f'layer {{ name: "{n}/pool" type: "Pooling" bottom: "{n}" '
                             f'top: "{n}/p" pooling_param {{ pool: MAX kernel_size: 3 pad: 1 }} }}')
                n += "/p"
            outs.append(n)
        bottoms = " ".join(f'bottom: "{o}"' for o in outs)
        lines.append(f'layer {{ name: "b{b}/concat" type: "Concat" {bottoms} top: "b{b}/out" }}')
        prev = f"b{b}/out"
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def small_net():
    return build_net(parse_net(SMALL, path="small.prototxt"))


@pytest.fixture(scope="module")
def evil_net():
    return build_net(parse_net(EVIL, path="evil.prototxt"))


def _boxes(drawing):
    out = {}
    for n in drawing.diagram.nodes:
        cx, cy = drawing.layout.centers[n.id]
        out[n.id] = (cx - n.width / 2, cy - n.height / 2, cx + n.width / 2, cy + n.height / 2)
    return out


def _check_geometry(drawing) -> None:
    """No two boxes overlap; every edge leaves its source box and enters its target from above."""
    boxes = _boxes(drawing)
    items = sorted(boxes.items(), key=lambda kv: kv[1][1])
    for i, (a, ba) in enumerate(items):
        for b, bb in items[i + 1:]:
            if bb[1] >= ba[3]:
                break
            overlap = min(ba[2], bb[2]) - max(ba[0], bb[0])
            assert overlap <= 0.5, f"boxes {a} and {b} overlap by {overlap:.1f}px"
    for e in drawing.diagram.edges:
        pts = drawing.layout.paths[e.id]
        assert len(pts) >= 4 and (len(pts) - 1) % 3 == 0
        s, t = boxes[e.src], boxes[e.dst]
        x0, y0 = pts[0]
        x1, y1 = pts[-1]
        tol = 2.0  # dot's plain output rounds to 1e-4 inch and box sizes to 5 digits
        assert s[0] - tol <= x0 <= s[2] + tol and s[1] - tol <= y0 <= s[3] + tol, \
            "edge starts off its box"
        assert t[0] - tol <= x1 <= t[2] + tol and t[1] - tol <= y1 <= t[3] + tol, \
            "edge ends off its box"
        assert y0 < y1, "edges run downwards"


@pytest.mark.parametrize("engine", ENGINES)
def test_layouts_give_valid_non_overlapping_svg(small_net, engine):
    d = draw(small_net, engine)
    assert d.layout.engine == engine
    _check_geometry(d)
    svg = render_svg(d.diagram, d.layout)
    root = ET.fromstring(svg)
    nodes = [g for g in root.iter(SVG_NS + "g") if "node" in (g.get("class") or "").split()]
    assert len(nodes) == len(d.diagram.nodes)
    assert len([p for p in root.iter(SVG_NS + "path") if p.get("class") == "edge"]) == \
        len(d.diagram.edges)
    # in-place ReLU is a sub-row of conv1's box, not a box of its own
    titles = [t.text for t in root.iter(SVG_NS + "text") if t.get("class") == "t"]
    assert "conv1" in titles and "relu1" not in titles
    conv1 = next(n for n in d.diagram.nodes if n.title == "conv1")
    assert [s.name for s in conv1.subrows] == ["relu1"]
    # edges are labelled with the blob shape (batch dropped): conv1 is 8x16x16
    labels = {t.text for t in root.iter(SVG_NS + "text") if t.get("class") == "lbl"}
    assert "8×16×16" in labels and "10" in labels
    # the legend lists the families present
    assert "convolution / fc" in svg and "pooling" in svg


@pytest.mark.parametrize("engine", ENGINES)
def test_wide_real_nets_lay_out_cleanly(zoo, engine):
    for path in ("bvlc_googlenet/deploy.prototxt", "resnet_50/ResNet-50-deploy.prototxt"):
        net = build_net(zoo / path, input_shapes={"data": (1, 3, 224, 224)})
        d = draw(net, engine)
        _check_geometry(d)
        # GoogLeNet's inception blocks put several boxes side by side
        if "googlenet" in path:
            ys = [round(c[1]) for c in d.layout.centers.values()]
            assert max(ys.count(y) for y in set(ys)) >= 3


def test_builtin_layout_of_300_layers_and_crossings():
    net = build_net(parse_net(wide_net(30), path="wide.prototxt"))
    assert len(net.layers) == 300
    t0 = time.perf_counter()
    d = draw(net, "builtin")
    seconds = time.perf_counter() - t0
    _check_geometry(d)
    print(f"\nbuilt-in layout of a 300-layer net: {d.layout.seconds * 1000:.0f} ms "
          f"(with analysis {seconds * 1000:.0f} ms)")
    # Two chains whose natural order crosses: barycentric ordering untangles them.
    nodes = [LNode(n, 100, 30) for n in ("a", "b", "c", "d", "e", "f")]
    edges = [LEdge("1", "a", "d"), LEdge("2", "b", "c"), LEdge("3", "c", "e"),
             LEdge("4", "d", "f")]
    lay = builtin_layout(nodes, edges)
    xs = {k: v[0] for k, v in lay.centers.items()}
    assert (xs["a"] < xs["b"]) == (xs["d"] < xs["c"])  # a-d and b-c do not cross
    assert abs(xs["c"] - xs["e"]) < 1 and abs(xs["d"] - xs["f"]) < 1  # chains are straight


def test_no_graphviz_needed(small_net, monkeypatch, tmp_path):
    monkeypatch.setattr(layout_mod, "dot_available", lambda: False)
    monkeypatch.setattr(layout_mod.shutil, "which", lambda name: None)
    for fmt in ("html", "svg", "png", "pdf"):
        data = render(small_net, fmt)
        assert len(data) > 1000
    assert b"layout: builtin" in render(small_net, "html")


def _run_cli(args, monkeypatch):
    monkeypatch.setitem(cli_main.SUBCOMMANDS, "visualize", "landmarknet.cli.visualize")
    return cli_main.main(["visualize", *args])


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_through_the_cli(tmp_path, monkeypatch, capsys, fmt):
    proto = tmp_path / "small.prototxt"
    proto.write_text(SMALL)
    out = tmp_path / f"small.{fmt}"
    assert _run_cli([str(proto), "-o", str(out)], monkeypatch) == 0  # format from the extension
    assert f"wrote {out}" in capsys.readouterr().out
    data = out.read_bytes()
    if fmt == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    elif fmt == "pdf":
        assert data[:5] == b"%PDF-"
    elif fmt == "svg":
        ET.fromstring(data)
    elif fmt == "html":
        assert data.startswith(b"<!DOCTYPE html>")
    elif fmt == "json":
        st = json.loads(data)
        assert st["totals"]["params"] == sum(r["params"] for r in st["layers"])
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        assert rows[0]["layer"] == "input" and rows[-1]["layer"] == "TOTAL"
    elif fmt == "md":
        assert b"| conv1 |" in data and b"Subtotals by name prefix" in data
    elif fmt == "dot":
        assert data.startswith(b"// small")
        if shutil.which("dot"):
            res = subprocess.run(["dot", "-Tsvg"], input=data, capture_output=True)
            assert res.returncode == 0, res.stderr
            ET.fromstring(res.stdout)


def test_cli_stdout_and_errors(tmp_path, monkeypatch, capsys):
    proto = tmp_path / "small.prototxt"
    proto.write_text(SMALL)
    assert _run_cli([str(proto), "--format", "md", "-o", "-"], monkeypatch) == 0
    assert capsys.readouterr().out.startswith("# small (test)")
    assert _run_cli([str(proto), "--format", "png", "-o", "-"], monkeypatch) == 2
    assert "binary" in capsys.readouterr().err
    assert _run_cli([str(proto), "-o", str(tmp_path / "x.weird")], monkeypatch) == 2
    assert "--format" in capsys.readouterr().err


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in = dict(attrs).get("type", "")
            self.scripts.append([self._in, ""])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None

    def handle_data(self, data):
        if self._in is not None:
            self.scripts[-1][1] += data


def test_html_is_self_contained(small_net):
    page = render(small_net, "html").decode()
    p = _Collect()
    p.feed(page)
    # nothing is fetched: no external scripts, styles, images or fonts
    for tag, attrs in p.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"(https?:)?//", value), f"<{tag} {key}={value}>"
    assert not any(tag == "link" for tag, _ in p.tags)
    kinds = [k for k, _ in p.scripts]
    assert kinds == ["application/json", ""]
    data = json.loads(p.scripts[0][1])
    assert [r["name"] for r in data["rows"]][:3] == ["input", "conv1", "relu1"]
    assert data["rows"][2]["node"] == data["rows"][1]["node"]  # relu1 drawn inside conv1
    assert "layer {" in data["rows"][1]["proto"] and "num_output: 8" in data["rows"][1]["proto"]
    assert data["csv"].splitlines()[0].startswith("index,layer,type")
    assert json.loads(data["json"])["totals"] == data["totals"]


@pytest.mark.parametrize("fmt", ["html", "svg", "md"])
def test_prototxt_text_is_escaped_in_markup(evil_net, fmt):
    text = render(evil_net, fmt).decode()
    assert EVIL_NAME not in text
    assert "<img" not in text and "<i>" not in text
    assert "<b>bold</b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    if fmt == "svg":
        root = ET.fromstring(text)
        assert not [e for e in root.iter() if e.tag.endswith("script")]
        texts = ["".join(t.itertext()) for t in root.iter(SVG_NS + "text")]
        assert any(EVIL_NAME in t for t in texts)  # shown as text
    if fmt == "html":
        # exactly the page's own two scripts
        assert text.count("<script") == 2 and text.count("</script>") == 2
        p = _Collect()
        p.feed(text)
        data = json.loads(p.scripts[0][1])
        names = [r["name"] for r in data["rows"]]
        assert EVIL_NAME in names  # the JSON carries the raw name; the page sets textContent
        assert EVIL_BLOB in data["rows"][1]["tops"]
        assert not any(tag in ("img", "i", "b") for tag, _ in p.tags)


def test_prototxt_text_survives_data_formats(evil_net):
    data = json.loads(render(evil_net, "json"))
    assert [r["name"] for r in data["layers"]][1] == EVIL_NAME
    rows = list(csv.DictReader(io.StringIO(render(evil_net, "csv").decode())))
    assert rows[1]["layer"] == EVIL_NAME and rows[1]["tops"] == EVIL_BLOB
    assert rows[3]["layer"].startswith("'=cmd|")  # no spreadsheet formula
    dot = render(evil_net, "dot").decode()
    assert '\\"' not in dot.replace('\\\\', '')  # quotes inside labels are escaped
    if shutil.which("dot"):
        res = subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True)
        assert res.returncode == 0, res.stderr
        root = ET.fromstring(res.stdout)
        assert not [e for e in root.iter() if e.tag.endswith("script")]
        assert EVIL_NAME in "".join(root.itertext())


def test_json_for_script_cannot_close_the_script():
    text = json_for_script({"a": "</script><!-- \u2028 & >"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!-- \u2028 & >"}


def test_analysis_in_the_drawing_matches_analyze(small_net):
    st = analyze(small_net)
    d = draw(st, "builtin")
    assert d.stats is st
    heads = [n for n in d.diagram.nodes if n.kind == "layer"]
    folded = sum(len(n.subrows) for n in heads)
    assert len(heads) + folded == len(small_net.layers)
    outs = [n.title for n in d.diagram.nodes if n.kind == "output"]
    assert outs == ["prob"]


def test_every_registered_family_has_a_colour_and_a_legend_label():
    from landmarknet.layers.registry import registered_types
    from landmarknet.render.model import FAMILY_COLORS, FAMILY_LABELS
    families = {reg.family for reg in registered_types().values()}
    assert families - set(FAMILY_COLORS) == set()
    assert families - set(FAMILY_LABELS) == set()
