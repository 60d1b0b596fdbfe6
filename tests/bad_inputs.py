"""The bad inputs we try, in one table: used by tests/test_bad_inputs.py and docs/bad_inputs.md.

Each case writes its files into a folder and returns the command line to run; the run must
exit with status ``status`` (2 unless said otherwise) and print a message that contains
``expect`` (which names the place). Cases marked ``isolated`` could hang, recurse or eat memory
when broken: they run in a child process under a memory limit and a timeout
(tests/fuzz/runner.py), the others in the test process. The seeded random cases of
tests/fuzz/cases.py are summarised in the same document.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

GOOD = """name: "good"
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1"
        inner_product_param { num_output: 3 } }
"""


@dataclass
class Case:
    """One bad input: what it is, how to make it, what the user must be told."""

    id: str
    what: str
    make: Callable[[Path], list[str]]
    expect: str
    isolated: bool = False
    status: int = 2


def _net(d: Path, text: str, name: str = "net.prototxt") -> Path:
    p = d / name
    p.write_text(text)
    return p


def _weights(d: Path, data: bytes, name: str = "w.caffemodel") -> list[str]:
    (d / name).write_bytes(data)
    return ["build", str(_net(d, GOOD)), "--weights", str(d / name)]


def _good_model(d: Path) -> bytes:
    from landmarknet.cli.main import main
    main(["build", str(_net(d, GOOD, "g.prototxt")), "--random-weights", "1", "--save",
          str(d / "g.caffemodel")])
    return (d / "g.caffemodel").read_bytes()


def _wrong_shape(d: Path) -> list[str]:
    other = GOOD.replace("num_output: 3", "num_output: 4")
    from landmarknet.cli.main import main
    main(["build", str(_net(d, other, "o.prototxt")), "--random-weights", "1", "--save",
          str(d / "o.caffemodel")])
    return ["build", str(_net(d, GOOD)), "--weights", str(d / "o.caffemodel"), "--strict-weights"]


def _pickle_pt(d: Path) -> list[str]:
    class Evil:  # unpickling this would run code; weights_only loading must refuse it
        def __reduce__(self):
            return (print, ("unpickled!",))
    (d / "w.pt").write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    return ["build", str(_net(d, GOOD)), "--weights", str(d / "w.pt")]


def _pickle_npy(d: Path) -> list[str]:
    np.save(d / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return ["forward", str(_net(d, GOOD)), "--random-weights", "1", "--input",
            f"data={d / 'x.npy'}"]


def _deep_unknown(d: Path) -> list[str]:
    nested = "zz { " * 500 + "}" * 500
    return ["build", str(_net(d, GOOD.replace("num_output: 3 }", f"num_output: 3 {nested} }}"))),
            "--lenient"]


def _filler(d: Path, filler: str) -> list[str]:
    return ["build", str(_net(d, GOOD.replace(
        "kernel_size: 3", f"kernel_size: 3 weight_filler {{ {filler} }}"))), "--random-weights", "1"]


def _same_names(d: Path, ext: str) -> list[str]:
    net = _net(d, GOOD.replace('name: "fc1"', 'name: "conv1"'))
    return ["build", str(net), "--random-weights", "1", "--save", str(d / f"w{ext}")]


def _skip_edges(d: Path) -> list[str]:
    """600 Eltwise layers, each also reading the input: 360,000 edge bends to lay out."""
    lines = ['input: "data" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }']
    prev = "data"
    for i in range(600):
        lines.append(f'layer {{ name: "r{i}" type: "ReLU" bottom: "{prev}" top: "r{i}" }}')
        lines.append(f'layer {{ name: "e{i}" type: "Eltwise" bottom: "r{i}" bottom: "data" '
                     f'top: "e{i}" }}')
        prev = f"e{i}"
    return ["visualize", str(_net(d, "\n".join(lines))), "-o", str(d / "skip.svg")]


def _fifo(d: Path, name: str) -> Path:
    os.mkfifo(d / name)
    return d / name


def _tiny_solver(d: Path) -> Path:
    net = _net(d, GOOD, "train.prototxt")
    (d / "solver.prototxt").write_text(f'net: "{net}"\nbase_lr: 0.01\nmax_iter: 1\n'
                                       'lr_policy: "fixed"\n')
    return d / "solver.prototxt"


CASES = [
    Case("missing-file", "a prototxt path that does not exist",
         lambda d: ["build", str(d / "nope.prototxt")], "nope.prototxt: cannot read file"),
    Case("empty-prototxt", "an empty prototxt (no layers, no inputs)",
         lambda d: ["build", str(_net(d, ""))], "net.prototxt: the net has no layers"),
    Case("binary-as-prototxt", "a .caffemodel passed where the prototxt goes",
         lambda d: ["build", str(_net(d, "")), "--weights", "x"] if False else
         ["build", str((d / "b.prototxt").write_bytes(b"\x0a\x03abc\x00\x01") and d / "b.prototxt")],
         "b.prototxt: this is a binary file"),
    Case("not-utf8", "a prototxt in Latin-1 with an accented layer name",
         lambda d: ["build", str((d / "l.prototxt").write_bytes(b'name: "caf\xe9"') and
                                  d / "l.prototxt")], "l.prototxt: not UTF-8 text"),
    Case("unknown-field", "a misspelt field inside a layer",
         lambda d: ["build", str(_net(d, GOOD.replace("kernel_size: 3", "kernel_sise: 3")))],
         "net.prototxt:4:43 (layer 'conv1'): unknown field 'kernel_sise' in ConvolutionParameter"),
    Case("bad-enum", "an enum value Caffe does not have",
         lambda d: ["build", str(_net(d, GOOD.replace(
             'type: "InnerProduct" bottom: "conv1" top: "fc1"',
             'type: "Pooling" bottom: "conv1" top: "fc1" pooling_param { pool: MEDIAN }')))],
         "net.prototxt:5:80 (layer 'fc1'): value 'MEDIAN' of field 'pool' in PoolingParameter "
         "is not one Caffe knows (MAX, AVE, STOCHASTIC)"),
    Case("unterminated-string", "a string without its closing quote",
         lambda d: ["build", str(_net(d, 'name: "oops\nlayer { }'))],
         "net.prototxt:1:7: unterminated string"),
    Case("missing-brace", "a layer block never closed",
         lambda d: ["build", str(_net(d, GOOD.rstrip()[:-3]))],
         "net.prototxt:6: unexpected end of file"),
    Case("mixed-v1-v2", "new 'layer' and legacy 'layers' blocks in one file",
         lambda d: ["build", str(_net(d, GOOD + 'layers { name: "old" type: RELU }\n'))],
         "net.prototxt:7: the net mixes new-style 'layer' (2) and legacy 'layers' (1)"),
    Case("v0-unknown-type", "a pre-2014 (V0) net with a type Caffe's V0 upgrade does not know",
         lambda d: ["build", str(_net(d, 'layers { layer { name: "c" type: "convolution" } }'))],
         "net.prototxt:1 (layer 'c'): unknown V0 layer type 'convolution'"),
    Case("input-dim-count", "input_dim with 3 values for one input",
         lambda d: ["build", str(_net(d, 'input: "d" input_dim: 1 input_dim: 3 input_dim: 8'))],
         "net.prototxt: 1 input(s) need 4 input_dim values (4 each), got 3"),
    Case("unknown-type", "a layer type nobody registered",
         lambda d: ["build", str(_net(d, GOOD.replace('"InnerProduct"', '"InnerProdukt"')))],
         "layer 'fc1' (type InnerProdukt): unknown layer type 'InnerProdukt'. Did you mean "
         "InnerProduct?"),
    Case("python-layer", "a Python layer whose class is not registered",
         lambda d: ["build", str(_net(d, GOOD + 'layer { name: "py" type: "Python" bottom: "fc1" '
                                               'top: "py" python_param { module: "evil" '
                                               'layer: "Rm" } }\n'))],
         "Python layer evil.Rm is not registered. landmarknet never imports modules"),
    Case("bottom-never-produced", "a bottom that no layer writes",
         lambda d: ["build", str(_net(d, GOOD.replace('bottom: "conv1" top: "fc1"',
                                                      'bottom: "conv9" top: "fc1"')))],
         "net.prototxt:5: bottom 'conv9' of layer 'fc1' is not produced by any earlier layer"),
    Case("cycle", "two layers feeding each other",
         lambda d: ["build", str(_net(d, 'input: "x" input_shape { dim: 1 }\n'
                                         'layer { name: "a" type: "ReLU" bottom: "b" top: "a" }\n'
                                         'layer { name: "b" type: "ReLU" bottom: "a" top: "b" }'))],
         "layer 'b' produces it later. Caffe needs layers in topological order"),
    Case("duplicate-top", "two layers writing the same blob, not in place",
         lambda d: ["build", str(_net(d, GOOD + 'layer { name: "conv2" type: "Convolution" '
                                               'bottom: "data" top: "conv1" convolution_param '
                                               '{ num_output: 2 kernel_size: 1 } }\n'))],
         "top 'conv1' of layer 'conv2' is already produced by layer 'conv1'"),
    Case("shape-mismatch-in-net", "an Eltwise over blobs of different shapes",
         lambda d: ["build", str(_net(d, GOOD + 'layer { name: "sum" type: "Eltwise" '
                                               'bottom: "conv1" bottom: "data" top: "s" }\n'))],
         "layer 'sum' (type Eltwise)"),
    Case("bad-layer-param", "a convolution without kernel_size",
         lambda d: ["build", str(_net(d, GOOD.replace(" kernel_size: 3", "")))],
         "layer 'conv1' (type Convolution): kernel_size is required"),
    Case("no-input-shape", "a Data layer whose channels only the database knows",
         lambda d: ["build", str(_net(d, 'layer { name: "d" type: "Data" top: "data" '
                                         'data_param { batch_size: 4 } }'))],
         "the shape of input 'data' (from Data layer 'd') is unknown; give it, e.g. "
         "--input-shape data="),
    Case("empty-weights", "an empty .caffemodel", lambda d: _weights(d, b""),
         "w.caffemodel"),
    Case("truncated-weights", "a .caffemodel cut in the middle of a blob",
         lambda d: _weights(d, _good_model(d)[:-37]), "w.caffemodel"),
    Case("html-weights", "an HTML page saved as .caffemodel (a failed download)",
         lambda d: _weights(d, b"<!DOCTYPE html><html><body>Not Found</body></html>"),
         "w.caffemodel"),
    Case("junk-weights", "random bytes", lambda d: _weights(
        d, np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "w.caffemodel"),
    Case("wrong-blob-shape", "weights of another net (fc1 has 4 outputs, not 3)", _wrong_shape,
         "fc1[0]: file [4, 72], net [3, 72]"),
    Case("pickle-pt", "a .pt whose pickle would run code", _pickle_pt, "w.pt: not a loadable "
         "PyTorch state_dict"),
    Case("pickle-npy", "an object .npy as a forward input", _pickle_npy,
         "--input data: cannot read"),
    Case("bad-input-shape", "--input-shape naming a blob that is not an input",
         lambda d: ["build", str(_net(d, GOOD)), "--input-shape", "conv1=1,3,8,8"],
         "--input-shape names conv1, which is not an input of this net"),
    # Found by fuzzing (issue 17); isolated: when broken they recurse, hang or eat memory.
    Case("lenient-deep-nesting", "--lenient with unknown blocks nested 500 deep", _deep_unknown,
         "skipped unknown field 'zz' in InnerProductParameter (layer 'fc1')", isolated=True,
         status=0),
    Case("huge-number-message", "a 100,000-digit number",
         lambda d: ["build", str(_net(d, GOOD.replace("num_output: 3", "num_output: " + "9" * 100000)))],
         "net.prototxt:6:43: Couldn't parse integer: 999999999999999999999999999999999999999"
         "9...[99950 characters]...9999999999", isolated=True),
    Case("filler-uniform-min-max", "a uniform filler with min > max",
         lambda d: _filler(d, 'type: "uniform" min: 1 max: -1'),
         "net.prototxt:3 (layer 'conv1'): convolution_param.weight_filler: uniform filler needs "
         "min <= max, got min 1.0 > max -1.0", isolated=True),
    Case("filler-gaussian-std", "a gaussian filler with std < 0",
         lambda d: _filler(d, 'type: "gaussian" std: -1'),
         "net.prototxt:3 (layer 'conv1'): convolution_param.weight_filler: gaussian filler needs "
         "std > 0, got std -1.0", isolated=True),
    Case("same-name-h5", "two layers with weights named alike, saved to .h5",
         lambda d: _same_names(d, ".h5"),
         "layers #0 (Convolution) and #1 (InnerProduct) are both named 'conv1'",
         isolated=True),
    Case("same-name-caffemodel", "the same, saved to .caffemodel (would not load back)",
         lambda d: _same_names(d, ".caffemodel"),
         "layers #0 (Convolution) and #1 (InnerProduct) are both named 'conv1'",
         isolated=True),
    Case("visualize-too-large", "visualize a net with 600 long skip edges",
         _skip_edges, "the drawing is too large to lay out: 1,202 boxes and 360,000 edge bends",
         isolated=True),
    Case("fifo-prototxt", "a FIFO (named pipe) given as the prototxt",
         lambda d: ["build", str(_fifo(d, "f.prototxt"))],
         "f.prototxt: not a regular file", isolated=True),
    Case("fifo-weights", "a FIFO given as --weights",
         lambda d: ["build", str(_net(d, GOOD)), "--weights", str(_fifo(d, "w.caffemodel"))],
         "w.caffemodel", isolated=True),
    Case("fifo-image", "a FIFO named f.jpg given to detect",
         lambda d: ["detect", str(_fifo(d, "f.jpg")), "--json", "-o", str(d / "out")],
         "f.jpg: not a regular file", isolated=True, status=1),  # per-input error: run goes on
    Case("device-cuda-99", "train --device cuda:99 (no such GPU, or a CPU-only torch)",
         lambda d: ["train", "--solver", str(_tiny_solver(d)), "--data", str(d), "--device",
                    "cuda:99", "--out", str(d / "out")],
         "--device 'cuda:99': ", isolated=True),
    Case("resume-empty-state", "train --resume with an empty state file",
         lambda d: ["train", "--solver", str(_tiny_solver(d)), "--data", str(d), "--resume",
                    str(_empty(d / "s.state.pt")), "--out", str(d / "out")],
         "s.state.pt: the state file is empty (0 bytes)", isolated=True),
    # Weights that do not fit, memory bombs (issue 17, points 3 and 6).
    Case("wrong-blob-shape-default", "weights of another net, without any strict option",
         lambda d: _wrong_shape(d)[:-1], "fc1[0]: file [4, 72], net [3, 72]"),
    Case("weights-fit-no-layer", "a weights file that shares no layer name with the net",
         lambda d: _weights(d, _good_model(d).replace(b"conv1", b"convX").replace(b"fc1", b"fcX")),
         "no layer of the file fits the net"),
    Case("memory-bomb-num-output", "an InnerProduct with num_output: 2000000000 (8 TB of weights)",
         lambda d: ["build", str(_net(d, 'input: "data" input_shape { dim: 1 dim: 1000 }\n'
                                         'layer { name: "fc" type: "InnerProduct" bottom: "data" '
                                         'top: "fc" inner_product_param { num_output: 2000000000 '
                                         '} }\n'))],
         "layer 'fc' (InnerProduct) needs 8.01 TB for its weights", isolated=True),
]


def _empty(p: Path) -> Path:
    p.write_bytes(b"")
    return p
