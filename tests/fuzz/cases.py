"""The seeded fuzz cases: mutated prototxts, weights (.caffemodel, HDF5, .pt), solvers, model
bundles and images, each run through the CLI by tests/test_fuzz.py (runner.run_cli).

``generate(n, seed)`` gives the same n cases for the same seed. A case writes its inputs into an
empty folder and returns the command line; the runner judges how the command ends. CI runs
DEFAULT_CASES (LANDMARKNET_FUZZ_CASES and LANDMARKNET_FUZZ_SEED change that); with more cases
than the default, the big nets of the zoo join the small ones as sources.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fuzz import mutate
from fuzz.runner import ROOT, run_cli

DEFAULT_CASES = 240
DEFAULT_SEED = 2024

GOOD = """name: "good"
input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1"
        inner_product_param { num_output: 3 } }
"""


class Unavailable(Exception):
    """A case needs files that are not here (../shared); the test skips it."""


@dataclass
class FuzzCase:
    """One generated input: its family, the mutation applied, how to make it and run it."""

    id: str
    family: str
    mutation: str
    make: Callable[[Path], list[str]]
    timeout: float = 60.0


def case_count() -> int:
    """How many cases to run (LANDMARKNET_FUZZ_CASES, default DEFAULT_CASES)."""
    return int(os.environ.get("LANDMARKNET_FUZZ_CASES", DEFAULT_CASES))


def case_seed() -> int:
    """LANDMARKNET_FUZZ_SEED, default DEFAULT_SEED."""
    return int(os.environ.get("LANDMARKNET_FUZZ_SEED", DEFAULT_SEED))


# ------------------------------------------------------------------------------ sources


def shared() -> Path:
    from landmarknet.paths import shared_dir
    return Path(shared_dir())


SMALL_NETS = ["prototxt/heatmap4_5/deploy.prototxt", "prototxt/squeeze77/deploy.prototxt",
              "prototxt/heatmap4_68_bn/deploy.prototxt", "prototxt/heatmap4_68_residual/deploy.prototxt",
              "zoo/mnist_lenet/lenet.prototxt", "zoo/cifar10_quick/cifar10_quick.prototxt",
              "zoo/legacy_v1_lenet/lenet.prototxt", "zoo/caffe_onnx_test_tiny/test.prototxt",
              "zoo/mtcnn_det1/det1.prototxt", "zoo/mtcnn_det3/det3.prototxt",
              "zoo/squeezenet_v1.1/deploy.prototxt", "zoo/hdf5_classification/nonlinear_train_val.prototxt",
              "zoo/faceboxes/deploy.prototxt", "zoo/mnist_lenet/lenet_train_test.prototxt"]


def net_sources(big: bool) -> list[Path]:
    """Prototxts to mutate: small, quick nets; with ``big`` every net of prototxt/ and the zoo."""
    if big:
        found = sorted(ROOT.glob("prototxt/*/*.prototxt"))
        if shared().joinpath("zoo").is_dir():
            found += sorted(shared().joinpath("zoo").glob("*/*.prototxt"))
        return [p for p in found if "solver" not in p.name]
    out = []
    for rel in SMALL_NETS:
        p = ROOT / rel if rel.startswith("prototxt/") else shared() / rel
        if p.exists():
            out.append(p)
    return out


class _Artifacts:
    """Good inputs made once per process (the mutations start from them)."""

    def __init__(self) -> None:
        self.dir: Path | None = None

    def folder(self) -> Path:
        if self.dir is None:
            import tempfile
            self.dir = Path(tempfile.mkdtemp(prefix="landmarknet-fuzz-src-"))
            import atexit
            atexit.register(shutil.rmtree, self.dir, True)
        return self.dir

    def good_net(self) -> Path:
        p = self.folder() / "good.prototxt"
        if not p.exists():
            p.write_text(GOOD)
        return p

    def weights(self, ext: str) -> Path:
        """GOOD's random weights as .caffemodel, .h5 or .pt."""
        p = self.folder() / f"good{ext}"
        if not p.exists():
            out = run_cli(["build", self.good_net(), "--random-weights", "1", "--save", p],
                          self.folder())
            assert out.status == 0, out.stderr
        return p

    def train_setup(self) -> Path:
        """A tiny heatmap net, its solver and 8 + 2 faces of ytf68 (links)."""
        root = self.folder() / "train"
        if not root.exists():
            data = shared() / "data" / "ytf68"
            if not data.is_dir():
                raise Unavailable(f"{data} is absent")
            for split, n in (("train", 8), ("val", 2)):
                (root / "data" / split).mkdir(parents=True)
                for pts in sorted((data / split).glob("*.pts"))[:n]:
                    for f in (pts, pts.with_suffix(".jpg")):
                        (root / "data" / split / f.name).symlink_to(f)
            from test_train import tiny_net
            tiny_net(root, k=68, size=32, batch=2)
        return root

    def face_image(self) -> Path:
        p = ROOT / "samples" / "astronaut.png"
        if not p.exists():
            raise Unavailable(f"{p} is absent")
        return p

    def small_jpeg(self) -> Path:
        p = self.folder() / "face.jpg"
        if not p.exists():
            from PIL import Image
            img = Image.open(self.face_image()).convert("RGB").resize((160, 160))
            img.save(p, quality=85)
        return p


SRC = _Artifacts()

# ------------------------------------------------------------------------------ families


def _write(d: Path, name: str, data: str | bytes) -> Path:
    p = d / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def prototxt_case(source: Path, mutation: str, rng: random.Random) -> Callable[[Path], list[str]]:
    """``build`` (sometimes --lenient, --random-weights or --json) on a mutated net."""
    def make(d: Path) -> list[str]:
        text = source.read_text()
        new = mutate.TEXT_MUTATORS[mutation](text, rng)
        net = _write(d, source.name, new)
        argv = ["build", net]
        if mutation == "deep-nesting" or rng.random() < 0.25:
            argv.append("--lenient")
        if rng.random() < 0.3:
            argv += ["--random-weights", "1"]
        if rng.random() < 0.5:
            argv.append("--json")
        return argv
    return make


def weights_case(ext: str, mutation: str, rng: random.Random) -> Callable[[Path], list[str]]:
    """A mutated weights file loaded into GOOD (``build --weights`` or ``convert``)."""
    def make(d: Path) -> list[str]:
        data = SRC.weights(ext).read_bytes()
        w = _write(d, "w" + ext, mutate.BYTE_MUTATORS[mutation](data, rng))
        if rng.random() < 0.3:
            out = rng.choice([".h5", ".caffemodel", ".pt"])
            return ["convert", w, d / f"out{out}", "--prototxt", SRC.good_net()]
        return ["build", SRC.good_net(), "--weights", w]
    return make


def hdf5_structure_case(variant: str) -> Callable[[Path], list[str]]:
    """A Caffe HDF5 file whose layout is wrong in one way (written with h5py)."""
    def make(d: Path) -> list[str]:
        import h5py
        import numpy as np
        p = d / "w.h5"
        with h5py.File(p, "w") as f:
            g = f.create_group("data")
            conv = g.create_group("conv1")
            if variant == "int-dtype":
                conv.create_dataset("0", data=np.ones((2, 3, 3, 3), dtype=np.int64))
            elif variant == "string-dataset":
                conv.create_dataset("0", data=np.array([b"abc", b"def"]))
            elif variant == "scalar":
                conv.create_dataset("0", data=np.float32(3.0))
            elif variant == "huge-declared":  # 40 GB declared, nothing written (chunked)
                conv.create_dataset("0", shape=(100000, 100000), dtype="f4", chunks=(100, 100))
            elif variant == "compound":
                conv.create_dataset("0", data=np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]))
            elif variant == "dangling-link":
                conv["0"] = h5py.SoftLink("/nowhere")
            elif variant == "external-link":
                conv["0"] = h5py.ExternalLink("/etc/passwd", "/x")
            elif variant == "blob-not-index":
                conv.create_dataset("weight", data=np.ones((2, 3, 3, 3), dtype=np.float32))
            elif variant == "data-is-dataset":
                del f["data"]
                f.create_dataset("data", data=np.ones(3, dtype=np.float32))
            elif variant == "nan-values":
                conv.create_dataset("0", data=np.full((2, 3, 3, 3), np.nan, dtype=np.float32))
            elif variant == "deep-groups":
                deep = g
                for i in range(200):
                    deep = deep.create_group(f"g{i}")
        return ["build", SRC.good_net(), "--weights", p]
    return make


HDF5_VARIANTS = ["int-dtype", "string-dataset", "scalar", "huge-declared", "compound",
                 "dangling-link", "external-link", "blob-not-index", "data-is-dataset",
                 "nan-values", "deep-groups"]


def pt_structure_case(variant: str) -> Callable[[Path], list[str]]:
    """A .pt file that torch can read but that is not the net's state_dict."""
    def make(d: Path) -> list[str]:
        import torch
        good = {"conv1.weight": torch.ones(2, 3, 3, 3), "conv1.bias": torch.zeros(2),
                "fc1.weight": torch.ones(3, 72), "fc1.bias": torch.zeros(3)}
        obj = {
            "list": lambda: [1, 2, 3],
            "tensor": lambda: torch.ones(3),
            "none": lambda: None,
            "nested": lambda: {"state_dict": {"model": good}},
            "int-tensors": lambda: {k: v.long() for k, v in good.items()},
            "complex": lambda: {k: v.to(torch.complex64) for k, v in good.items()},
            "bool": lambda: {k: v.bool() for k, v in good.items()},
            "strings": lambda: {k: "x" for k in good},
            "int-keys": lambda: {i: v for i, v in enumerate(good.values())},
            "wrong-shape": lambda: dict(good, **{"fc1.weight": torch.ones(3, 7)}),
            "zero-dim": lambda: {k: torch.tensor(1.0) for k in good},
            "nan": lambda: {k: torch.full_like(v, float("nan")) for k, v in good.items()},
            "extra-keys": lambda: dict(good, **{"zzz.weight": torch.ones(1)}),
            "empty": lambda: {},
            "half": lambda: {k: v.half() for k, v in good.items()},
        }[variant]()
        p = d / "w.pt"
        torch.save(obj, p)
        return ["build", SRC.good_net(), "--weights", p]
    return make


PT_VARIANTS = ["list", "tensor", "none", "nested", "int-tensors", "complex", "bool", "strings",
               "int-keys", "wrong-shape", "zero-dim", "nan", "extra-keys", "empty", "half"]


def solver_case(mutation: str, rng: random.Random) -> Callable[[Path], list[str]]:
    """``train`` for 2 iterations with a mutated solver of the tiny heatmap net."""
    def make(d: Path) -> list[str]:
        root = SRC.train_setup()
        text = (root / "solver.prototxt").read_text()
        new = mutate.TEXT_MUTATORS[mutation](text, rng)
        s = _write(d, "solver.prototxt", new)
        return ["train", "--solver", s, "--data", root / "data", "--out", d / "out",
                "--max-iter", "2", "--workers", "0", "--no-progress", "--threads", "1"]
    return make


def bundle_case(rng: random.Random) -> tuple[str, Callable[[Path], list[str]]]:
    """``detect`` with a copy of a shipped bundle whose model.json is mutated."""
    mutation_rng = random.Random(rng.random())
    text = (ROOT / "landmarknet/models/heatmap4_5/model.json").read_text()
    mutation, new = mutate.mutate_json_text(text, mutation_rng)

    def make(d: Path) -> list[str]:
        src = ROOT / "landmarknet/models/heatmap4_5"
        b = d / "bundle"
        b.mkdir()
        for f in src.iterdir():
            if f.suffix == ".caffemodel":
                (b / f.name).symlink_to(f)
            elif f.is_file():
                shutil.copy(f, b / f.name)
        (b / "model.json").write_text(new)
        return ["detect", SRC.small_jpeg(), "--model", b, "--json", "-o", d / "out"]
    return mutation, make


def image_case(mutation: str, rng: random.Random) -> Callable[[Path], list[str]]:
    """``detect`` on a mutated image file (bytes mutations of a JPEG or PNG)."""
    def make(d: Path) -> list[str]:
        src = SRC.small_jpeg() if rng.random() < 0.7 else SRC.face_image()
        img = _write(d, "face" + src.suffix, mutate.BYTE_MUTATORS[mutation](src.read_bytes(), rng))
        return ["detect", img, "--json", "-o", d / "out"]
    return make


#: (family, weight in the CI mix). Weighted by what is cheap to run and likely to find bugs.
FAMILIES = [("prototxt", 55), ("caffemodel", 10), ("hdf5", 8), ("pt", 7), ("solver", 5),
            ("bundle", 7), ("image", 8)]


def generate(n: int | None = None, seed: int | None = None) -> list[FuzzCase]:
    """n seeded cases over all families (the same ones for the same n and seed)."""
    n = case_count() if n is None else n
    seed = case_seed() if seed is None else seed
    sched = random.Random(seed)
    families = [f for f, w in FAMILIES for _ in range(w)]
    sched.shuffle(families)
    try:
        sources = net_sources(big=n > DEFAULT_CASES)
    except Exception:  # noqa: BLE001 - no shared folder: the repository's nets only
        sources = sorted(ROOT.glob("prototxt/*/deploy.prototxt"))
    cases = []
    for i in range(n):
        family = families[i % len(families)]
        rng = random.Random(f"{seed}/{i}")
        if family == "prototxt":
            source = sources[rng.randrange(len(sources))]
            mutation = rng.choice(sorted(mutate.TEXT_MUTATORS))
            make = prototxt_case(source, mutation, rng)
            what = f"{source.parent.name}-{mutation}"
        elif family in ("caffemodel", "pt", "hdf5") and rng.random() < 0.6:
            mutation = rng.choice(sorted(mutate.BYTE_MUTATORS))
            make = weights_case({"caffemodel": ".caffemodel", "pt": ".pt", "hdf5": ".h5"}[family],
                                mutation, rng)
            what = mutation
        elif family == "hdf5":
            mutation = rng.choice(HDF5_VARIANTS)
            make, what = hdf5_structure_case(mutation), mutation
        elif family == "pt":
            mutation = rng.choice(PT_VARIANTS)
            make, what = pt_structure_case(mutation), mutation
        elif family == "caffemodel":  # the rarer branch: a real model from the zoo, mutated
            mutation = rng.choice(sorted(mutate.BYTE_MUTATORS))
            make, what = _zoo_weights_case(mutation, rng), "det1-" + mutation
        elif family == "solver":
            mutation = rng.choice([m for m in sorted(mutate.TEXT_MUTATORS)
                                   if m not in ("swap-type", "deep-nesting", "repeat-layer")])
            make, what = solver_case(mutation, rng), mutation
        elif family == "bundle":
            mutation, make = bundle_case(rng)
            what = mutation
        else:
            mutation = rng.choice(sorted(mutate.BYTE_MUTATORS))
            make, what = image_case(mutation, rng), mutation
        cases.append(FuzzCase(f"{i:04d}-{family}-{what}", family, mutation, make))
    return cases


def _zoo_weights_case(mutation: str, rng: random.Random) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        src = shared() / "zoo" / "mtcnn_det1"
        if not src.is_dir():
            raise Unavailable(f"{src} is absent")
        data = (src / "det1.caffemodel").read_bytes()
        w = _write(d, "det1.caffemodel", mutate.BYTE_MUTATORS[mutation](data, rng))
        return ["build", src / "det1.prototxt", "--weights", w]
    return make


def summary_rows(outcomes: list[tuple[FuzzCase, object, str]]) -> list[str]:
    """Markdown rows (family, mutation, cases, results, clear errors, problems, an example):
    ``outcomes`` holds (case, runner.Outcome, its message with the scratch path cut out)."""
    groups: dict[tuple[str, str], list] = {}
    for case, out, message in outcomes:
        groups.setdefault((case.family, case.mutation), []).append((out, message))
    rows = []
    for (family, mutation), outs in sorted(groups.items()):
        ok = sum(o.status == 0 and o.problem() is None for o, _ in outs)
        bad = sum(o.problem() is not None for o, _ in outs)
        err = len(outs) - ok - bad  # exit 2, or detect's exit 1 naming the unreadable input
        example = next((m for o, m in outs if o.error_line), "") or next(
            (line for o, _ in outs if o.partial_failure() for line in o.stderr.splitlines()
             if line.startswith("detect: ") and ": landmark model" not in line), "")
        example = re.sub(r"/tmp/\S*/", "", example)
        example = example.splitlines()[0] if example else ""
        example = json.dumps(example[:160])[1:-1].replace("|", "\\|")
        rows.append(f"| {family} | {mutation} | {len(outs)} | {ok} | {err} | {bad} | {example} |")
    return rows
