#!/usr/bin/env python3
"""Regenerate the pictures in docs/images/ used by docs/tools.md (developer tool).

Needs Chromium (apt-get install chromium) for the HTML screenshots and ../shared/zoo for
GoogLeNet; the PNG export needs only matplotlib.

    python tools/dev/doc_screenshots.py [--out docs/images]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from landmarknet.build import build_net  # noqa: E402
from landmarknet.paths import shared_dir  # noqa: E402
from landmarknet.render import render  # noqa: E402
from landmarknet.render.chromium import Chromium  # noqa: E402


def page_shot(c: Chromium, html: Path, out: Path, layer: str | None) -> None:
    """Open a page, select a layer (centred), save the viewport."""
    c.open(html)
    if layer:
        i = c.eval(f"lnet.rows.findIndex(r => r.name === {layer!r})")
        if i < 0:
            raise SystemExit(f"{html}: no layer {layer!r}")
        c.eval(f"lnet.select({i}, true)")
    c.screenshot(out)
    print(f"wrote {out}")


def main() -> int:
    """Write the screenshots."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    heatmap = ROOT / "prototxt" / "heatmap4_68" / "deploy.prototxt"
    zoo = shared_dir() / "zoo"
    with tempfile.TemporaryDirectory() as tmp, Chromium(width=1400, height=860) as c:
        pages = []
        net = build_net(heatmap)
        pages.append((render(net, "html"), "tools_heatmap4_68.png", "stage2_conv1"))
        googlenet = build_net(zoo / "bvlc_googlenet" / "deploy.prototxt",
                              input_shapes={"data": (1, 3, 224, 224)})
        pages.append((render(googlenet, "html"), "tools_googlenet.png", "inception_3a/3x3"))
        resnet = build_net(zoo / "resnet_50" / "ResNet-50-deploy.prototxt")
        pages.append((render(resnet, "html"), "tools_resnet50.png", "res2a"))
        for data, name, layer in pages:
            html = Path(tmp) / (name + ".html")
            html.write_bytes(data)
            page_shot(c, html, args.out / name, layer)
        # The static PNG (matplotlib): the header, then where stage 1 meets stage 2.
        from PIL import Image

        from landmarknet.render import draw
        from landmarknet.render.svg import HEADER_H
        png = Path(tmp) / "heatmap.png"
        png.write_bytes(render(net, "png"))
        img = Image.open(png)
        drawing = draw(net)
        scale = img.height / (drawing.layout.height + HEADER_H)
        ys = {n.title: drawing.layout.centers[n.id][1] for n in drawing.diagram.nodes}
        y0 = int((ys["conv4_2_CPM"] - 40 + HEADER_H) * scale)
        y1 = int((ys["stage2_conv2"] + 40 + HEADER_H) * scale)
        head = img.crop((0, 0, img.width, int(HEADER_H * scale)))
        body = img.crop((0, y0, img.width, y1))
        top = Image.new("RGB", (img.width, head.height + body.height), "white")
        top.paste(head, (0, 0))
        top.paste(body, (0, head.height))
        top = top.resize((top.width // 2, top.height // 2), Image.LANCZOS)
        out = args.out / "tools_heatmap4_68_static.png"
        top.save(out, optimize=True)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
