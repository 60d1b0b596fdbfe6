"""Memory budgets before allocation: nets whose weights or blobs would not fit are refused with
the layer that asks for the most (never torch's "can't allocate memory"), and images larger
than --max-pixels are refused from their header, before decoding."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from landmarknet.build import build_net
from landmarknet.cli.main import main
from landmarknet.memory import MemoryLimitError, format_size, memory_limit, parse_size

#: Bombs from the fuzzing run, scaled to need terabytes: above any machine's memory.
BOMBS = {
    "inner-product": ('input: "data" input_shape { dim: 1 dim: 1000 }\n'
                      'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                      'inner_product_param { num_output: 2000000000 } }\n',
                      "layer 'fc' (InnerProduct) needs 8.01 TB for its weights "
                      "(2,002,000,000,000 values)"),
    "embed": ('input: "data" input_shape { dim: 1 dim: 4 }\n'
              'layer { name: "emb" type: "Embed" bottom: "data" top: "e" '
              'embed_param { num_output: 1000000 input_dim: 1000000 } }\n',
              "layer 'emb' (Embed) needs 4 TB for its weights"),
    "input-dim": ('input: "data" input_shape { dim: 1000000000 dim: 3 dim: 32 dim: 32 }\n'
                  'layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }\n',
                  "input 'data' (from Input layer 'input') needs 12.3 TB "
                  "(3,072,000,000,000 values)"),
    "conv-outputs": ('input: "data" input_shape { dim: 1 dim: 3 dim: 512 dim: 512 }\n'
                     'layer { name: "conv" type: "Convolution" bottom: "data" top: "c" '
                     'convolution_param { num_output: 2000000 kernel_size: 1 } }\n',
                     "layer 'conv' (Convolution) needs 2.1 TB for its outputs"),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_memory_bombs_are_refused_before_allocation(bomb, tmp_path):
    """Through the CLI in a subprocess whose address space is capped at 6 GB: a refusal
    that allocated the terabytes first could not print its message."""
    text, expect = BOMBS[bomb]
    (tmp_path / "bomb.prototxt").write_text(text)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); "
            "from landmarknet.cli.main import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "build", str(tmp_path / "bomb.prototxt"),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("landmarknet build: error: "), proc.stderr
    assert expect in proc.stderr
    assert "the memory available on this machine now" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


SMALL = """input: "data" input_shape { dim: 1 dim: 1000 }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
        inner_product_param { num_output: 2000 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param { num_output: 10 } }
"""
#: fc1: 2000 x 1000 weights + 2000 biases; fc2: 10 x 2000 + 10; outputs 1000 + 2000 + 10.
SMALL_BYTES = 4 * (2000 * 1000 + 2000 + 10 * 2000 + 10 + 1000 + 2000 + 10)


@pytest.mark.parametrize("phase, factor", [("test", 1), ("train", 2)])
def test_max_memory_decides_at_the_estimate(tmp_path, capsys, phase, factor):
    (tmp_path / "n.prototxt").write_text(SMALL)
    need = SMALL_BYTES * factor
    argv = ["build", str(tmp_path / "n.prototxt"), "--phase", phase]
    assert main(argv + ["--max-memory", str(need)]) == 0
    capsys.readouterr()
    assert main(argv + ["--max-memory", str(need - 1)]) == 2
    err = capsys.readouterr().err
    assert f"layer 'fc1' (InnerProduct) needs {format_size(4 * 2002000 * factor)} for its " \
           "weights (2,002,000 values)" in err
    assert f"more than the limit of {format_size(need - 1)} (--max-memory)" in err
    assert main(argv + ["--max-memory", "none"]) == 0


def test_estimate_matches_what_the_built_net_holds(tmp_path):
    """The estimate's weights are the bytes of the real net's state_dict (shared weights once),
    its outputs the bytes of Caffe's blobs (an in-place top shares its bottom's memory)."""
    from landmarknet.build import _BlobRecorder
    text = """input: "data" input_shape { dim: 2 dim: 3 dim: 16 dim: 16 }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "s1" type: "Convolution" bottom: "c" top: "s1" param { name: "w" }
        convolution_param { num_output: 8 kernel_size: 1 bias_term: false } }
layer { name: "s2" type: "Convolution" bottom: "s1" top: "s2" param { name: "w" }
        convolution_param { num_output: 8 kernel_size: 1 bias_term: false } }
"""
    (tmp_path / "n.prototxt").write_text(text)
    net = build_net(tmp_path / "n.prototxt")
    weights = sum(t.numel() * t.element_size()
                  for t in {id(t): t for t in net.state_dict(keep_vars=True).values()}.values())
    x = torch.zeros(2, 3, 16, 16)
    with torch.no_grad():
        produced = _BlobRecorder(net, set(net.caffe_graph.blob_of)).run_recording(x)
    # Caffe's blobs: data, c (BatchNorm writes it in place), s1, s2.
    assert sorted(tuple(t.shape) for t in produced.values()) == \
        [(2, 3, 16, 16)] + [(2, 8, 14, 14)] * 4
    acts = 4 * (2 * 3 * 16 * 16 + 3 * 2 * 8 * 14 * 14)
    with pytest.raises(MemoryLimitError) as exc:
        build_net(tmp_path / "n.prototxt", max_memory=weights + acts - 1)
    assert f"needs {format_size(weights + acts)} (weights {format_size(weights)}" in str(exc.value)
    build_net(tmp_path / "n.prototxt", max_memory=weights + acts)


def test_memory_limit_context_reaches_nested_builds(tmp_path):
    (tmp_path / "n.prototxt").write_text(SMALL)
    with memory_limit(1000):
        with pytest.raises(MemoryLimitError, match="more than the limit of 1 kB"):
            build_net(tmp_path / "n.prototxt")
    with memory_limit(0):  # 0: no limit
        build_net(tmp_path / "n.prototxt")


@pytest.mark.parametrize("text, value", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GB", 3 << 29),
                                         ("2e9", 2_000_000_000), ("none", 0), ("100", 100),
                                         ("4GiB", 4 << 30)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "lots", "1e400", "9" * 100, "0.5"])
def test_parse_size_refuses_junk(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_bad_max_memory_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "n.prototxt").write_text(SMALL)
    with pytest.raises(SystemExit) as exc:
        main(["build", str(tmp_path / "n.prototxt"), "--max-memory", "lots"])
    assert exc.value.code == 2
    assert "expected a size such as 8G" in capsys.readouterr().err


# -- images ------------------------------------------------------------------------------------


def _png_header_bomb(path, w: int, h: int) -> None:
    """A valid PNG header claiming w x h gray pixels, with only a few rows of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = zlib.compress(b"\x00" * (w + 1) * 4, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0,
                                                                       0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_detect_refuses_images_above_max_pixels_and_goes_on(tmp_path, capsys):
    import cv2
    _png_header_bomb(tmp_path / "bomb.png", 60000, 60000)  # 3.6 gigapixels, 10 GB as BGR
    _png_header_bomb(tmp_path / "big.png", 12000, 10000)
    cv2.imwrite(str(tmp_path / "ok.png"), np.full((64, 64, 3), 128, np.uint8))
    argv = ["detect", str(tmp_path / "bomb.png"), str(tmp_path / "big.png"),
            str(tmp_path / "ok.png"), "--model", "none", "--detector", "haar", "--json",
            "-o", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(argv) == 1  # two inputs could not be read; the third was
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["input"].rsplit("/", 1)[1] for x in lines] == ["bomb.png", "big.png", "ok.png"]
    assert "3,600,000,000 pixels, more than --max-pixels 100,000,000; not decoded" in \
        lines[0]["error"]
    assert "12000 x 10000: 120,000,000 pixels" in lines[1]["error"]
    assert lines[2]["error"] is None
    # Raised on request, the 120 MP header gets as far as decoding (its data is truncated).
    capsys.readouterr()
    main(argv[:1] + [str(tmp_path / "big.png")] + argv[4:] + ["--max-pixels", "200M"])
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert "max-pixels" not in (line["error"] or "")


def test_read_image_checks_the_decoded_size_too(tmp_path):
    """A format whose header Pillow cannot read is checked after decoding."""
    import cv2

    from landmarknet.detect import ImageError
    from landmarknet.detect.images import read_image
    cv2.imwrite(str(tmp_path / "x.pfm"), np.zeros((300, 400, 3), np.float32))
    assert read_image(tmp_path / "x.pfm").image.shape == (300, 400, 3)
    with pytest.raises(ImageError, match="400 x 300: 120,000 pixels, more than --max-pixels"):
        read_image(tmp_path / "x.pfm", max_pixels=100_000)


def test_hdf5_weights_that_declare_too_much_are_refused_before_reading(tmp_path, capsys):
    """A 4 kB gzip'd HDF5 file declaring 160 GB of zeros (a decompression bomb)."""
    import h5py
    with h5py.File(tmp_path / "bomb.h5", "w") as f:
        f.create_dataset("data/fc1/0", shape=(200000, 200000), dtype="f4", compression="gzip",
                         chunks=(1000, 1000))
    assert (tmp_path / "bomb.h5").stat().st_size < 100_000
    (tmp_path / "n.prototxt").write_text(SMALL)
    for argv in (["build", str(tmp_path / "n.prototxt"), "--weights", str(tmp_path / "bomb.h5")],
                 ["convert", str(tmp_path / "bomb.h5"), str(tmp_path / "x.caffemodel")]):
        capsys.readouterr()
        assert main(argv + ["--max-memory", "10G"]) == 2
        err = capsys.readouterr().err
        assert "bomb.h5: its datasets declare 160 GB (the largest, 'data/fc1/0', 160 GB), more " \
               "than the limit of 10.7 GB (--max-memory); nothing was read" in err, err
