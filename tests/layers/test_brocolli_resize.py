"""brocolli's Resize, BilinearInterpolate and Unsqueeze (the layers its PyTorch converter writes
for F.interpolate and unsqueeze).

References:
* the reference Caffe (brocolli 9.0.2, tests/reference/real_caffe.py): every output-size rule
  and both corner rules, forward; Resize's backward (the only one of the three the fork has);
* numpy loops restating the fork's CPU code (resize_layer.cpp -> util_img.cpp's
  BiLinearResizeMat_cpu, bilinear_interpolate_layer.cpp) in its number types, without Caffe;
* finite differences (torch.autograd.gradcheck) for the gradients the fork does not compute.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.caffe.prototxt import parse_net
from landmarknet.layers.registry import converter_for
from reference.compare import rel_err
from reference.real_caffe import caffe_forward, run_caffe
from layers.checker import assert_refused, layer_spec

f32 = np.float32


def _input(name: str, shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "{name}" type: "Input" top: "{name}" '
            f'input_param {{ shape {{ {dims} }} }} }}\n')


def _layer(name: str, type_: str, params: str, bottom: str = "data") -> str:
    return f'layer {{ name: "{name}" type: "{type_}" bottom: "{bottom}" top: "{name}" {params} }}\n'


def _run(text: str, inputs: dict[str, np.ndarray], blobs: list[str]) -> dict[str, np.ndarray]:
    net = build_net(parse_net(text))
    with torch.no_grad():
        out = net.run(inputs, blobs=blobs)
    return {k: v.numpy() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# numpy restatements of the fork's loops (float32 as in a float net)
# ----------------------------------------------------------------------------------------------

def np_resize(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """BiLinearResizeMat_cpu per (n, c) plane: sample at i * in/out; taps past the end dropped."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow), np.float32)
    sh, sw = f32(h) / f32(oh), f32(w) / f32(ow)
    for i in range(oh):
        fh = f32(i) * sh
        y = int(np.floor(fh))
        fh = f32(fh - f32(y))
        h0, h1 = abs(f32(1) - fh), abs(fh)
        for j in range(ow):
            fw = f32(j) * sw
            xx = int(np.floor(fw))
            fw = f32(fw - f32(xx))
            w0, w1 = abs(f32(1) - fw), abs(fw)
            v = (h0 * w0) * x[:, :, y, xx]
            right, down = xx + 1 < w, y + 1 < h
            if right:
                v = v + (h0 * w1) * x[:, :, y, xx + 1]
            if down:
                v = v + (h1 * w0) * x[:, :, y + 1, xx]
            if right and down:
                v = v + (h1 * w1) * x[:, :, y + 1, xx + 1]
            out[:, :, i, j] = v
    return out


def _np_positions(src: int, dst: int, align: bool) -> list[tuple[int, int, np.float32]]:
    """(low, high, position) per output index, as bilinear_interpolate_layer.cpp."""
    rows = []
    for i in range(dst):
        if align:
            p = f32(f32(src - 1) / f32(dst - 1)) * f32(i)
        else:  # float ratio, then double arithmetic, stored as float
            p = f32(np.float64(f32(src) / f32(dst)) * (np.float64(f32(i)) + 0.5) - 0.5)
        p = f32(src - 1) if p > src - 1 else p
        p = f32(0) if p < 0 else p
        t = int(np.floor(p))
        t = 0 if t < 0 else t
        t = src - 2 if t > src - 2 else t
        rows.append((t, t + 1, p))
    return rows


def np_bilinear_interpolate(x: np.ndarray, oh: int, ow: int, align: bool) -> np.ndarray:
    """The fork's four-point loop; a tap at index -1 (1-pixel source) has weight 0."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow), np.float32)

    def at(a: int, b: int) -> np.ndarray:
        return x[:, :, max(a, 0), max(b, 0)]

    for i, (h0, h1, ph) in enumerate(_np_positions(h, oh, align)):
        for j, (w0, w1, pw) in enumerate(_np_positions(w, ow, align)):
            a, b = f32(w1) - pw, pw - f32(w0)
            r0 = a * at(h0, w0) + b * at(h0, w1)
            r1 = a * at(h1, w0) + b * at(h1, w1)
            out[:, :, i, j] = (f32(h1) - ph) * r0 + (ph - f32(h0)) * r1
    return out


# ----------------------------------------------------------------------------------------------
# against the reference Caffe
# ----------------------------------------------------------------------------------------------

SHAPE = (2, 3, 5, 7)
#: (name, type, params, output (H, W)) for a (2, 3, 5, 7) input
CASES = [
    ("rs_up", "Resize", "resize_param { height: 11 width: 13 }", (11, 13)),
    ("rs_down", "Resize", "resize_param { height: 3 width: 4 }", (3, 4)),
    ("rs_same", "Resize", "resize_param { height: 5 width: 7 }", (5, 7)),
    ("rs_mixed", "Resize", "resize_param { height: 8 width: 3 }", (8, 3)),
    ("rs_py2", "Resize", "resize_param { is_pyramid_test: true out_height_scale: 2 "
                         "out_width_scale: 1.5 }", (10, 10)),
    ("rs_py_odd", "Resize", "resize_param { is_pyramid_test: true out_height_scale: 0.5 "
                            "out_width_scale: 1.3 height: 99 width: 99 }", (2, 9)),
    ("bi_up", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 11 dst_w: 13 }",
     (11, 13)),
    ("bi_up_hp", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 11 dst_w: 13 "
                                        "align_corners: false }", (11, 13)),
    ("bi_down", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 3 dst_w: 4 }",
     (3, 4)),
    ("bi_down_hp", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 2 dst_w: 3 "
                                          "align_corners: false }", (2, 3)),
    ("bi_h_only", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 9 }", (9, 7)),
    ("bi_w_only", "BilinearInterpolate", "bilinear_interpolate_param { dst_w: 2 "
                                         "align_corners: false }", (5, 2)),
    ("bi_s2", "BilinearInterpolate", "bilinear_interpolate_param { scale_factor: 2 }", (10, 14)),
    ("bi_s2_hp", "BilinearInterpolate", "bilinear_interpolate_param { scale_factor: 2 "
                                        "align_corners: false }", (10, 14)),
    ("bi_s13_hp", "BilinearInterpolate", "bilinear_interpolate_param { scale_factor: 1.3 "
                                         "align_corners: false }", (6, 9)),
    ("bi_s05", "BilinearInterpolate", "bilinear_interpolate_param { scale_factor: 0.5 "
                                      "align_corners: false }", (2, 3)),
    ("bi_same", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 5 dst_w: 7 }",
     (5, 7)),
    ("bi_1x1", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 1 dst_w: 1 "
                                      "align_corners: false }", (1, 1)),
]
UNSQUEEZE = [("u0", 0, (1, 2, 3, 5, 7)), ("u2", 2, (2, 3, 1, 5, 7)), ("u4", 4, (2, 3, 5, 7, 1)),
             ("um1", -1, (2, 3, 5, 7, 1)), ("um5", -5, (1, 2, 3, 5, 7)),
             ("um3", -3, (2, 3, 1, 5, 7))]
NET = _input("data", SHAPE) + "".join(_layer(n, t, p) for n, t, p, _ in CASES) + "".join(
    _layer(n, "Unsqueeze", f"unsqueeze_param {{ dim: {d} }}") for n, d, _ in UNSQUEEZE)
BLOBS = [c[0] for c in CASES] + [u[0] for u in UNSQUEEZE]


def _data(shape=SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, shape).astype(np.float32)


@pytest.mark.caffe_ref
def test_forward_matches_real_caffe(tmp_path: Path) -> None:
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET)
    x = _data()
    _, ref = caffe_forward(proto, {"data": x}, blobs=BLOBS)
    ours = _run(NET, {"data": x}, BLOBS)
    for name, _, _, hw in CASES:
        assert ref[name].shape == SHAPE[:2] + hw, name  # the test's own sizes are Caffe's
        assert ours[name].shape == ref[name].shape, name
        assert rel_err(ours[name], ref[name]) <= 1e-6, name
        # Same products and sums in the same order: the fork's numbers to the bit.
        np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)
    for name, _, shape in UNSQUEEZE:
        assert ref[name].shape == shape and ours[name].shape == shape, name
        np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)


ONE_PIXEL = (2, 3, 1, 6)
ONE_PIXEL_CASES = [
    ("bi_a", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 4 dst_w: 9 }"),
    ("bi_h", "BilinearInterpolate", "bilinear_interpolate_param { dst_h: 3 dst_w: 4 "
                                    "align_corners: false }"),
    ("rs", "Resize", "resize_param { height: 3 width: 10 }"),
]


@pytest.mark.caffe_ref
def test_one_pixel_source_matches_real_caffe(tmp_path: Path) -> None:
    # A 1-row source: BilinearInterpolate's low row is -1 with weight 0 (the fork reads the row
    # before; only sample 0, channel 0 reads outside the blob, so that plane is left out), and
    # Resize never has a second row.
    text = _input("data", ONE_PIXEL) + "".join(_layer(*c) for c in ONE_PIXEL_CASES)
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    x = _data(ONE_PIXEL, seed=1)
    names = [c[0] for c in ONE_PIXEL_CASES]
    _, ref = caffe_forward(proto, {"data": x}, blobs=names)
    ours = _run(text, {"data": x}, names)
    for name in names:
        assert ours[name].shape == ref[name].shape, name
        np.testing.assert_array_equal(ours[name][:, 1:], ref[name][:, 1:], err_msg=name)
        np.testing.assert_array_equal(ours[name][1:], ref[name][1:], err_msg=name)


RESIZE_BACKWARD = 'name: "resize_bw"\nforce_backward: true\n' + _input("data", SHAPE) + """
layer { name: "up" type: "Resize" bottom: "data" top: "up" resize_param { height: 11 width: 13 } }
layer { name: "down" type: "Resize" bottom: "data" top: "down"
        resize_param { is_pyramid_test: true out_height_scale: 0.6 out_width_scale: 0.5 } }
layer { name: "fu" type: "Flatten" bottom: "up" top: "fu" }
layer { name: "fd" type: "Flatten" bottom: "down" top: "fd" }
layer { name: "cat" type: "Concat" bottom: "fu" bottom: "fd" top: "cat" }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 456 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "cat" bottom: "t" top: "loss" }
"""


@pytest.mark.caffe_ref
def test_resize_backward_matches_real_caffe(tmp_path: Path) -> None:
    # Resize is the only one of the three with a Backward in the fork; its diff rules are the
    # forward's taps transposed. Caffe's own top diffs are pushed through our module.
    proto = tmp_path / "net.prototxt"
    proto.write_text(RESIZE_BACKWARD)
    x = _data()
    t = np.random.default_rng(5).normal(size=(2, 456)).astype(np.float32)
    meta, out = run_caffe("backward", {"prototxt": str(proto), "phase": "train", "seed": 0},
                          {"data": x, "t": t})
    idx = {name: i for i, name in enumerate(meta["blobs"])}
    net = build_net(parse_net(RESIZE_BACKWARD))
    xt = torch.tensor(x, requires_grad=True)
    for name in ("up", "down"):
        y = net.get_submodule(name)(xt)
        np.testing.assert_array_equal(y.detach().numpy(), out[f"data{idx[name]}"])
        y.backward(torch.tensor(out[f"diff{idx[name]}"]))
    ref = out[f"diff{idx['data']}"]
    assert np.abs(ref).max() > 0
    assert rel_err(xt.grad.numpy(), ref) <= 1e-6


# ----------------------------------------------------------------------------------------------
# without Caffe: numpy restatements, gradients, refusals
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,type_,params,hw", CASES, ids=[c[0] for c in CASES])
def test_forward_matches_numpy_restatement(name, type_, params, hw) -> None:
    x = _data(seed=2)
    out = _run(NET, {"data": x}, [name])[name]
    if type_ == "Resize":
        want = np_resize(x, *hw)
    else:
        align = "align_corners: false" not in params
        want = np_bilinear_interpolate(x, *hw, align)
    assert out.shape == want.shape
    np.testing.assert_array_equal(out, want)


def test_one_pixel_source_matches_numpy() -> None:
    text = _input("data", ONE_PIXEL) + "".join(_layer(*c) for c in ONE_PIXEL_CASES)
    x = _data(ONE_PIXEL, seed=3)
    out = _run(text, {"data": x}, ["bi_a", "bi_h", "rs"])
    np.testing.assert_array_equal(out["bi_a"], np_bilinear_interpolate(x, 4, 9, True))
    np.testing.assert_array_equal(out["bi_h"], np_bilinear_interpolate(x, 3, 4, False))
    np.testing.assert_array_equal(out["rs"], np_resize(x, 3, 10))
    # Each output row of a 1-row source is the row itself, resampled along the width.
    np.testing.assert_array_equal(out["bi_a"][:, :, 0], out["bi_a"][:, :, 3])


def test_resize_edge_fades_and_matches_hand_values() -> None:
    # 2 -> 4 along the width: positions 0, 0.5, 1, 1.5; the last has no right neighbour and
    # keeps only its (1 - 0.5) weight: the fork does not renormalise.
    x = np.array([[[[2.0, 4.0]]]], np.float32)
    text = _input("data", (1, 1, 1, 2)) + _layer("r", "Resize",
                                                 "resize_param { height: 1 width: 4 }")
    out = _run(text, {"data": x}, ["r"])["r"]
    np.testing.assert_array_equal(out, [[[[2.0, 3.0, 4.0, 2.0]]]])


def test_unsqueeze_runs_on_another_batch() -> None:
    text = _input("data", (2, 3, 4)) + _layer("u", "Unsqueeze", "unsqueeze_param { dim: -2 }")
    net = build_net(parse_net(text))
    x = torch.randn(5, 3, 4)
    assert net.get_submodule("u")(x).shape == (5, 3, 1, 4)


@pytest.mark.parametrize("type_,params", [
    ("Resize", "resize_param { height: 7 width: 4 }"),
    ("Resize", "resize_param { is_pyramid_test: true out_height_scale: 0.7 "
               "out_width_scale: 1.6 }"),
    ("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 7 dst_w: 4 }"),
    ("BilinearInterpolate", "bilinear_interpolate_param { scale_factor: 1.5 "
                            "align_corners: false }"),
])
def test_gradient_is_the_derivative(type_, params) -> None:
    # The fork's BilinearInterpolate has an empty Backward (no gradient reaches its bottom in
    # Caffe); landmarknet gives the true derivative, as PyTorch's F.interpolate would.
    spec = layer_spec(type_, params, [(1, 2, 4, 5)])
    module = converter_for(spec)(spec).module
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


@pytest.mark.parametrize("type_,params,shape,match", [
    ("Resize", "resize_param { height: 4 }", (1, 2, 3, 3), "resize_param.width is required"),
    ("Resize", "resize_param { }", (1, 2, 3, 3), "resize_param.height is required"),
    ("Resize", "resize_param { is_pyramid_test: true out_height_scale: 2 }", (1, 2, 3, 3),
     "resize_param.out_width_scale is required"),
    ("Resize", "resize_param { height: 0 width: 4 }", (1, 2, 3, 3), "empty 0x4 output"),
    ("Resize", "resize_param { is_pyramid_test: true out_height_scale: 0.2 out_width_scale: 1 }",
     (1, 2, 3, 3), "out_height_scale/out_width_scale gives an empty 0x3"),
    ("Resize", "resize_param { is_pyramid_test: true out_height_scale: -1 out_width_scale: 1 }",
     (1, 2, 3, 3), "must be positive"),
    ("Resize", "resize_param { height: 4 width: 4 }", (2, 3, 5), "needs a 4-D"),
    ("BilinearInterpolate", "bilinear_interpolate_param { }", (1, 2, 3, 3),
     "needs dst_h/dst_w or scale_factor"),
    ("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 4 scale_factor: 2 }",
     (1, 2, 3, 3), "both dst_h/dst_w and scale_factor"),
    ("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 1 dst_w: 4 }", (1, 2, 3, 3),
     "align_corners"),
    ("BilinearInterpolate", "bilinear_interpolate_param { scale_factor: 0.4 }", (1, 2, 3, 3),
     "align_corners (true by default) with a 1x1 output"),
    ("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 0 dst_w: 4 }", (1, 2, 3, 3),
     "dst_h/dst_w gives an empty 0x4"),
    ("BilinearInterpolate", "bilinear_interpolate_param { dst_h: -2 dst_w: 4 }", (1, 2, 3, 3),
     "empty"),
    ("BilinearInterpolate", "bilinear_interpolate_param { scale_factor: 0 }", (1, 2, 3, 3),
     "scale_factor must be positive"),
    ("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 4 dst_w: 4 }", (1, 2, 3),
     "needs a 4-D"),
    ("Unsqueeze", "", (2, 3), "unsqueeze_param.dim must be set"),
    ("Unsqueeze", "unsqueeze_param { dim: 3 }", (2, 3), "dim 3 is outside [-3, 2]"),
    ("Unsqueeze", "unsqueeze_param { dim: -4 }", (2, 3), "dim -4 is outside"),
])
def test_bad_parameters_are_refused(type_, params, shape, match) -> None:
    assert_refused(type_, params, [shape], match=match)


def test_two_bottoms_refused() -> None:
    assert_refused("Resize", "resize_param { height: 2 width: 2 }", [(1, 1, 2, 2)] * 2,
                   match="needs 1 bottom")


def test_emitted_code_and_onnx_give_the_same_numbers(tmp_path: Path) -> None:
    # Every size rule at once (the battery has one config per type): the standalone file
    # and the ONNX file checked in ONNX Runtime reproduce the modules.
    import importlib.util

    from landmarknet.emit import emit_python
    from landmarknet.export import export_onnx
    net = build_net(parse_net(NET))
    x = torch.tensor(_data(seed=4))
    with torch.no_grad():
        ours = net.run({"data": x}, blobs=BLOBS)
    path = tmp_path / "emitted.py"
    emit_python(net, path)
    spec = importlib.util.spec_from_file_location("emitted_brocolli_resize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Net().eval()
    with torch.no_grad():
        theirs = model(x)
    for name in BLOBS:
        torch.testing.assert_close(theirs[name], ours[name], rtol=0, atol=0, msg=name)
    report = export_onnx(net, tmp_path / "net.onnx")
    assert report.ok and report.max_rel <= 1e-6, report.render()
