"""Training from a Caffe ``solver.prototxt``: the loop, logs, curves, snapshots and exact resume.

The solver (``landmarknet.solver.CaffeSolver``) owns the update rule and the schedule; this
module feeds it. One iteration = ``iter_size`` forward/backward passes over batches of the
train net's Input batch size, then ``solver.apply_update()``. As in Caffe:

* ``test_interval``: every that many iterations (and at 0 with ``test_initialization``, and at
  the end) the val set is run once, each loss top averaged, and the prediction decoded to
  points for NME / AUC / failure rate (heatmaps: ``landmarknet.decode``; regressions: unit
  coordinates ``(x + 0.5) / S`` as the squeeze nets' prototxts define them);
* ``display`` / ``average_loss``: a CSV row with the smoothed loss and each loss top, and the PNG
  curves redrawn (each stage's loss, val NME);
* ``snapshot``: ``<prefix>_iter_N.caffemodel`` (atomic) and ``<prefix>_iter_N.state.pt``
  (atomic: weights as tensors, solver state, RNG states, iteration; read with
  ``weights_only=True``). ``resume`` continues exactly: the batch order and every sample's
  augmentation are functions of ``(random_seed, position)``, not of a live generator;
* a NaN or inf loss top stops the run (:class:`TrainingDiverged`) naming the iteration and the
  top; nothing is written after it, so the last snapshot stays the last good one;
* ``ema`` (not a Caffe solver field, a flag of ours): an exponential moving average of the
  weights is kept beside them, ``a <- a + (1 - d_t) (w - a)`` after every update with
  ``d_t = min(d, (1 + t) / (10 + t))`` (so the first iterations do not drag the initial weights
  along); validation, the ``.caffemodel`` snapshots and the bundle use the average, the state
  file keeps both.

GPU extras behind flags: bf16 autocast (``amp``), ``channels_last``, ``torch.compile``; DDP when
started by ``torchrun`` (``WORLD_SIZE`` > 1): one process per GPU, each a shard of every
epoch (the effective batch is ``world x batch x iter_size``; DDP averages the gradients, as
Caffe's multi-GPU solver does).
"""
from __future__ import annotations

import csv
import os
import time
import warnings
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from landmarknet.data.crop import CropPolicy
from landmarknet.data.dataset import (LandmarkDataset, eval_loader, is_celeba, read_samples,
                                      train_loader)
from landmarknet.data.heatmaps import render_heatmaps
from landmarknet.data.schemes import get_scheme
from landmarknet.data.transforms import (Augment, SampleTransform, angle_of_eyes,
                                         default_crop_scale)
from landmarknet.errors import LandmarknetError

STATE_FORMAT = 1


class TrainingError(LandmarknetError):
    """A training run that cannot start or continue."""


class TrainingDiverged(TrainingError):
    """A loss became NaN or infinite."""


def _make_folder(folder: Path) -> None:
    """Create the snapshot folder, or say which one cannot be made (the solver's
    snapshot_prefix, or --out)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"{folder}: cannot create the snapshot folder "
                            f"({exc.strerror or exc}); check --out or the solver's "
                            "snapshot_prefix") from None


# ------------------------------------------------------------------------------ solver access

def _plan_get(plan, name, default=None):
    if isinstance(plan, dict):
        return plan.get(name, default)
    return getattr(plan, name, default)


# ------------------------------------------------------------------------------ configuration

@dataclass
class TrainConfig:
    """Everything a run needs besides the solver file's own settings."""

    solver: Path
    data: Optional[Path] = None  # 300W train folder, a folder with train/ and val/, or CelebA root
    val: Optional[Path] = None  # 300W val folder or CelebA root (partition 1); None: guessed
    weights: Optional[Path] = None
    resume: Optional[Path] = None
    out: Optional[Path] = None  # snapshots/logs go to OUT/<basename of snapshot_prefix>
    device: str = "cpu"
    amp: bool = False  # bf16 autocast (CUDA)
    channels_last: bool = False  # (CUDA)
    compile: bool = False
    max_iter: Optional[int] = None
    snapshot: Optional[int] = None  # override the solver's
    test_interval: Optional[int] = None  # override the solver's
    display: Optional[int] = None
    batch_size: Optional[int] = None  # override the Input layer's N
    input_size: Optional[int] = None  # override the Input layer's H=W (targets follow)
    workers: int = 4
    #: Where training crops are made: "cpu" (loader processes, OpenCV), "device" (decoded once,
    #: warped and augmented on the training device; data/device_pipeline.py) or "auto" (device
    #: on CUDA with fewer than 8 loader processes, cpu otherwise).
    pipeline: str = "auto"
    sigma: float = 1.0  # heatmap Gaussian sigma in heatmap pixels
    crop_scale: Optional[float] = None  # default: 1.25 (68/77 points), 2.2 (5 points)
    augment: Augment = field(default_factory=Augment)
    mean: float = 127.5
    scale: float = 1.0 / 128
    refine: str = "taylor"  # heatmap decoding for val NME
    train_limit: Optional[int] = None  # use only the first N train samples (tests)
    val_limit: Optional[int] = None
    progress: bool = True
    bundle: bool = True  # write OUT/bundle at the end (deploy.prototxt beside train_val needed)
    log_every: Optional[int] = None  # CSV/curves cadence; default: display
    #: Layers whose blobs are not trained (lr_mult and decay_mult 0): "A,B,..." or "upto:NAME".
    freeze: Optional[str] = None
    #: Exponential moving average of the weights (decay per iteration, e.g. 0.999), or None.
    #: Validation, the .caffemodel snapshots and the bundle then hold the averaged weights; the
    #: state file keeps both, so --resume stays exact.
    ema: Optional[float] = None


def _resolve(path: str, solver: Path) -> Path:
    """A path from a solver file: as given (Caffe: relative to the cwd), else near the solver."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    for base in (solver.parent, *solver.resolve().parents):
        if (base / p).exists():
            return base / p
    raise TrainingError(f"{solver}: net {path!r} not found (relative to the working folder or "
                        "the solver's folders)")


def _atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temp file, fsync, rename over ``path``, fsync the folder: a kill at any
    moment leaves either the old file or the complete new one, never a partial one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # a folder cannot be fsync'ed on some file systems
        pass


def _check_device(device: str) -> None:
    """A device this torch can use, or a TrainingError saying why not (torch would assert)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TrainingError(f"--device {device!r} is not a device ({exc}); use cpu, cuda or "
                            "cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise TrainingError(f"--device {device!r}: training runs on cpu or cuda only")
    if not torch.cuda.is_available():
        why = ("this torch is built without CUDA" if torch.version.cuda is None
               else "no CUDA GPU is visible")
        raise TrainingError(f"--device {device!r}: {why} ({torch.__version__}); use --device "
                            "cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise TrainingError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA "
                            "device(s) visible")


def _read_state(path: Path) -> dict:
    """The state file's dict, or a TrainingError naming the file (truncated, empty, foreign)."""
    if not path.is_file():
        raise TrainingError(f"--resume {path}: no such state file")
    size = path.stat().st_size
    hint = ("write it with `landmarknet train` snapshots (<prefix>_iter_N.state.pt); an "
            "interrupted run keeps its earlier complete snapshots: resume from one of those")
    if size == 0:
        raise TrainingError(f"--resume {path}: the state file is empty (0 bytes); {hint}")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle and EOF errors all mean: unreadable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrainingError(f"--resume {path}: cannot read the training state ({size} bytes: "
                            f"truncated, corrupted or not a state file: "
                            f"{type(exc).__name__}: {reason[:200]}); {hint}") from None
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
        got = st.get("format") if isinstance(st, dict) else type(st).__name__
        raise TrainingError(f"--resume {path}: not a landmarknet training state (format "
                            f"{got!r}, expected {STATE_FORMAT}); {hint}")
    wanted = {"iter": int, "solver": dict, "net": dict, "torch_rng": torch.Tensor}
    for key, kind in wanted.items():
        if not isinstance(st.get(key), kind):
            raise TrainingError(f"--resume {path}: the state's '{key}' is "
                                f"{type(st.get(key)).__name__}, not {kind.__name__}; {hint}")
    return st


def _run_shapes(shapes: dict[str, tuple], batch: int, scale_hw: float) -> dict[str, tuple]:
    """The train net's input shapes at the run's batch size, 4-D inputs' H and W scaled by
    ``scale_hw`` (--input-size over the prototxt's; the targets follow the data)."""
    out = {}
    for name, shp in shapes.items():
        shp = (batch,) + tuple(shp[1:])
        if len(shp) == 4 and scale_hw != 1:
            shp = shp[:2] + (int(round(shp[2] * scale_hw)), int(round(shp[3] * scale_hw)))
        out[name] = shp
    return out


# ------------------------------------------------------------------------------ the trainer

class Trainer:
    """A training run; ``run()`` trains to max_iter (or raises TrainingDiverged)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        _check_device(cfg.device)
        # A broken state file is reported before the data set is read (which takes a while).
        self._resume_state = _read_state(Path(cfg.resume)) if cfg.resume else None
        plan = self._read_solver()
        self._join_processes()
        self._build_net(plan)
        self._load_initial_weights(plan)
        self._find_losses()
        self._read_data()
        self._make_solver()
        self._start_ema()
        self.start_iter = 0
        if cfg.resume:
            self._load_state(Path(cfg.resume))
        self._wrap_model()
        self.pred_blob = self._prediction_blob()
        self.csv_fields = (["iter", "lr", "loss"] + [self._col(t) for t, _ in self.loss_tops]
                           + ["val_loss"] + [f"val_{self._col(t)}" for t, _ in self.loss_tops]
                           + ["val_nme_io", "val_nme_ip", "val_auc08", "val_fr08", "val_fr10",
                              "it_per_s", "elapsed_s", "bad_samples"])
        self.history: list[dict] = []
        self.last_snapshot: Optional[Path] = None
        self.last_val: Optional[dict] = None

    # -- setup steps (in the order __init__ runs them) ---------------------------------------
    def _read_solver(self):
        """Read the solver file and settle the run's schedule and output paths (the config
        overrides the solver); returns the solver's training plan."""
        from landmarknet.caffe.prototxt import read_solver
        from landmarknet.solver import training_plan

        cfg = self.cfg
        self.solver_path = Path(cfg.solver)
        self.param = read_solver(self.solver_path)
        plan = training_plan(self.param, self.solver_path)
        self.max_iter = int(cfg.max_iter if cfg.max_iter is not None
                            else _plan_get(plan, "max_iter", self.param.max_iter))
        self.display = int(cfg.display if cfg.display is not None
                           else _plan_get(plan, "display", self.param.display) or 0)
        self.average_loss = max(1, int(_plan_get(plan, "average_loss", 1) or 1))
        self.test_interval = int(cfg.test_interval if cfg.test_interval is not None
                                 else _plan_get(plan, "test_interval", 0) or 0)
        self.test_initialization = bool(_plan_get(plan, "test_initialization", True))
        self.snapshot_every = int(cfg.snapshot if cfg.snapshot is not None
                                  else _plan_get(plan, "snapshot", 0) or 0)
        self.iter_size = max(1, int(_plan_get(plan, "iter_size", 1) or 1))
        seed = _plan_get(plan, "random_seed", None)
        self.seed = int(seed) if seed is not None and seed >= 0 else 0
        prefix = str(_plan_get(plan, "snapshot_prefix", "") or self.solver_path.stem)
        self.prefix = (Path(cfg.out) / Path(prefix).name) if cfg.out else Path(prefix)
        _make_folder(self.prefix.parent)
        self.log_path = Path(f"{self.prefix}_log.csv")
        self.curves_path = Path(f"{self.prefix}_curves.png")
        return plan

    def _join_processes(self) -> None:
        """Rank, world size and this process's device; under torchrun (WORLD_SIZE > 1) the
        process group is joined and each process takes the GPU of its local rank."""
        cfg = self.cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = cfg.device
        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            if device.startswith("cuda"):
                device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.local_rank)
        self.device = torch.device(device)
        self.is_main = self.rank == 0
        if (cfg.amp or cfg.channels_last) and self.device.type != "cuda":
            warnings.warn("--amp / channels_last act on CUDA only; ignored on " + str(self.device))

    def _build_net(self, plan) -> None:
        """Build the solver's train net (TRAIN phase) at the run's batch size and input size;
        the prototxt's input shapes are read from its graph, so the net is built once."""
        from landmarknet.build import build_from_graph, net_graph
        from landmarknet.caffe.prototxt import read_net

        cfg = self.cfg
        train_net = _plan_get(plan, "train_net")
        if train_net is None or not isinstance(train_net, (str, os.PathLike)):
            raise TrainingError(f"{self.solver_path}: give the train net as a file (net: or "
                                "train_net:); inline net_param is not supported here")
        self.net_path = _resolve(str(train_net), self.solver_path)
        self.parsed = read_net(self.net_path)
        torch.manual_seed(self.seed)
        graph = net_graph(self.parsed, phase="train")
        if not graph.nodes or any(i.shape is None or min(i.shape, default=1) <= 0
                                  for i in graph.inputs):
            # an empty net or an input of unknown shape: the build's own checks say which
            # (they run before any layer is built, so this costs nothing)
            build_from_graph(graph)
        shapes = {i.name: tuple(i.shape) for i in graph.inputs}
        self.input_names = list(shapes)
        if "data" not in shapes:
            raise TrainingError(f"{self.net_path}: the train net has no 'data' input "
                                f"(inputs: {self.input_names})")
        _, c, h, _ = shapes["data"]
        self.batch = int(cfg.batch_size or shapes["data"][0])
        self.size = int(cfg.input_size or h)
        self.shapes = _run_shapes(shapes, self.batch, self.size / h)
        self.channels = "GRAY" if c == 1 else "BGR"
        self.net = build_from_graph(graph, input_shapes=self.shapes, seed=self.seed,
                                    device=self.device)

    def _load_initial_weights(self, plan) -> None:
        """Load --weights, else the solver's ``weights`` files, printing each load's report."""
        from landmarknet.params import load_weights

        cfg = self.cfg
        init = [cfg.weights] if cfg.weights else list(_plan_get(plan, "weights", []) or [])
        for wfile in init:
            report = load_weights(self.net, wfile)
            if self.is_main:
                print(report.render())

    def _find_losses(self) -> None:
        """The (blob, loss weight) of every loss top of the train net; a net without is refused."""
        self.loss_tops = [(self.net.caffe_graph.blob_of[t], wgt)
                          for info in self.net.layers.values()
                          for t, wgt in zip(info.node.tops, info.loss_weights) if wgt]
        if not self.loss_tops:
            raise TrainingError(f"{self.net_path}: the train net has no loss")

    def _read_data(self) -> None:
        """Read the train (and val) samples, check them against the net's target inputs and
        set up the training data pipeline."""
        cfg = self.cfg
        train_dir, val_dir, part_train, part_val = self._data_dirs()
        samples, rep = read_samples(train_dir, part_train, self._points_from_targets())
        if cfg.train_limit:
            samples = samples[: cfg.train_limit]
        self.scheme = get_scheme(len(samples[0].points))
        self.data_report = {"train": rep.summary()}
        self.heatmap_stride = None
        self._check_targets()
        crop_scale = cfg.crop_scale or default_crop_scale(self.scheme.n_points)
        self.policy = CropPolicy(self.size, crop_scale)
        tr = SampleTransform(self.scheme, self.policy, cfg.augment, self.channels)
        self.train_set = LandmarkDataset(samples, tr, seed=self.seed, train=True)
        self._choose_pipeline(samples, tr)
        self.val_set = None
        if val_dir is not None:
            self._read_val_set(val_dir, part_val)
        self.n_bad = 0
        self.bad_examples: list[str] = []

    def _choose_pipeline(self, samples: list, tr: SampleTransform) -> None:
        """Where training crops are made (cfg.pipeline; 'auto' decided here), and the device
        pipeline's patch cache when it is the device."""
        cfg = self.cfg
        if cfg.pipeline not in ("auto", "cpu", "device"):
            raise TrainingError(f"pipeline must be auto, cpu or device, got {cfg.pipeline!r}")
        # auto: measured on an H200 host (docs/performance.md), 14 loader processes keep up
        # with the GPU and leave it all to training; with fewer, decoding and warping on the
        # CPU become the bottleneck and the GPU does them faster.
        cuda = self.device.type == "cuda"
        self.pipeline = cfg.pipeline if cfg.pipeline != "auto" else \
            ("device" if cuda and cfg.workers < 8 else "cpu")
        self.patch_cache = None
        if self.pipeline == "device":
            from landmarknet.data.device_pipeline import PatchCache
            self.patch_cache = PatchCache(samples, tr, self.device,
                                          threads=max(2, cfg.workers))

    def _read_val_set(self, val_dir: Path, part_val) -> None:
        """The validation set: the train scheme's points, crops without augmentation."""
        vs, vrep = read_samples(val_dir, part_val, self.scheme.n_points)
        if self.cfg.val_limit:
            vs = vs[: self.cfg.val_limit]
        self.data_report["val"] = vrep.summary()
        self.val_set = LandmarkDataset(vs, SampleTransform(self.scheme, self.policy, None,
                                                           self.channels), train=False)

    def _make_solver(self) -> None:
        """The Caffe solver over the net's blobs, with --freeze's layers given lr_mult and
        decay_mult 0."""
        from landmarknet.solver import CaffeSolver

        self.solver = CaffeSolver(self.param, self.net)
        if not self.cfg.freeze:
            return
        from landmarknet.params import WeightsError, layer_selector
        try:
            frozen = layer_selector(self.cfg.freeze, self.net)
        except WeightsError as exc:
            raise TrainingError(f"--freeze: {exc}") from None
        for b in self.solver.blobs:
            if frozen(b.layer):
                b.lr_mult = b.decay_mult = 0.0
        self.frozen = sorted({b.layer for b in self.solver.blobs if frozen(b.layer)})
        if self.is_main:
            print(f"frozen (lr_mult 0): {len(self.frozen)} layers, {self.frozen[0]} .. "
                  f"{self.frozen[-1]}" if self.frozen else "frozen: no learnable layer")

    def _start_ema(self) -> None:
        """The moving average of the weights (--ema), started at the initial weights."""
        self.ema: Optional[dict[str, torch.Tensor]] = None
        if self.cfg.ema is None:
            return
        if not 0.0 < self.cfg.ema < 1.0:
            raise TrainingError(f"--ema must be a decay in (0, 1), e.g. 0.999; got {self.cfg.ema}")
        self.ema = {k: v.detach().clone() for k, v in self._averaged_tensors().items()}

    def _wrap_model(self) -> None:
        """``self.model``: the net as the loop calls it (channels_last, DDP, torch.compile as
        asked); ``self.net`` stays the plain module that holds the weights."""
        cuda = self.device.type == "cuda"
        if cuda and self.cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.model = self.net
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.model = DDP(self.net, device_ids=[self.device.index] if cuda else None)
        if self.cfg.compile:
            self.model = torch.compile(self.model)

    @staticmethod
    def _col(top: str) -> str:
        """CSV column of a loss top; a top named like a fixed column ('loss') gets a prefix."""
        return f"top_{top}" if top in ("iter", "lr", "loss", "elapsed_s", "it_per_s") else top

    # -- setup helpers ----------------------------------------------------------------------
    def _data_dirs(self):
        cfg = self.cfg
        if cfg.data is None:
            raise TrainingError("no training data: give --data (a 300W folder, a folder with "
                                "train/ and val/, or a CelebA root)")
        data = Path(cfg.data)
        if is_celeba(data):
            val = Path(cfg.val) if cfg.val else data
            return data, val, 0, (1 if is_celeba(val) else None)
        if (data / "train").is_dir() and not any(data.glob("*.pts")):
            val = Path(cfg.val) if cfg.val else ((data / "val") if (data / "val").is_dir() else None)
            return data / "train", val, None, ("val" if val and is_celeba(val) else None)
        val = Path(cfg.val) if cfg.val else None
        return data, val, None, ("val" if val and is_celeba(val) else None)

    def _points_from_targets(self) -> Optional[int]:
        if "points" in self.shapes:
            return int(np.prod(self.shapes["points"][1:])) // 2
        return None

    def _check_targets(self) -> None:
        k = self.scheme.n_points
        for name in self.input_names:
            if name == "data":
                continue
            shp = self.shapes[name]
            if name == "heatmaps":
                if shp[1] not in (k, k + 1):
                    raise TrainingError(f"heatmaps input has {shp[1]} channels; a {k}-point "
                                        f"scheme needs {k} or {k + 1} (with background)")
                self.heatmap_stride = self.size / shp[2]
            elif name == "points":
                if int(np.prod(shp[1:])) != 2 * k:
                    raise TrainingError(f"points input {list(shp)} does not hold {k} points")
            elif name not in ("box", "angle"):
                raise TrainingError(f"no target generator for the input '{name}' (known: data, "
                                    "heatmaps, points, box, angle)")

    def _prediction_blob(self) -> Optional[str]:
        """The blob holding the final prediction: the deploy net's output if the train net has
        it, else the first bottom of the last loss that reads the target."""
        blobs = set(self.net.caffe_graph.blob_of.values())
        deploy = self.net_path.parent / "deploy.prototxt"
        if deploy.is_file():
            from landmarknet.caffe.prototxt import read_net
            from landmarknet.graph import NetState, build_graph
            try:
                g = build_graph(read_net(deploy), NetState("test", 0, ()))
                outs = [g.blob_of[t] for t in g.outputs()]
                for o in outs:
                    if o in blobs:
                        return o
            except Exception:  # noqa: BLE001 - fall back to the losses
                pass
        target = "heatmaps" if "heatmaps" in self.input_names else "points"
        found = None
        for info in self.net.layers.values():
            if any(info.loss_weights):
                bottoms = [self.net.caffe_graph.blob_of.get(b, b) for b in info.node.bottoms]
                if target in bottoms and bottoms[0] != target:
                    found = bottoms[0]
        return found

    # -- batches ----------------------------------------------------------------------------
    def batch_source(self, start_batch: int = 0):
        """The infinite training batches from position ``start_batch``, from the pipeline the
        run uses (device: data/device_pipeline.py; cpu: the DataLoader)."""
        if self.patch_cache is not None:
            from landmarknet.data.device_pipeline import DeviceBatches
            return DeviceBatches(self.patch_cache, self.cfg.augment, self.scheme.flip,
                                 self.batch, seed=self.seed, start_batch=start_batch,
                                 rank=self.rank, world=self.world)
        return train_loader(self.train_set, self.batch, seed=self.seed, start_batch=start_batch,
                            rank=self.rank, world=self.world, workers=self.cfg.workers,
                            pin_memory=self.device.type == "cuda")

    def inputs(self, batch: dict) -> list[torch.Tensor]:
        """A collated batch -> the net's inputs in order, made on the training device."""
        dev = self.device
        img = batch["image"].to(dev, non_blocking=True).float()
        img = (img - self.cfg.mean) * self.cfg.scale
        if self.cfg.channels_last and dev.type == "cuda":
            img = img.contiguous(memory_format=torch.channels_last)
        pts = batch["points"].to(dev, non_blocking=True).float()
        out = {"data": img}
        for name in self.input_names:
            shp = self.shapes[name]
            if name == "heatmaps":
                out[name] = render_heatmaps(pts, (shp[2], shp[3]), sigma=self.cfg.sigma,
                                            stride=self.heatmap_stride,
                                            background=shp[1] == self.scheme.n_points + 1)
            elif name == "points":
                out[name] = ((pts + 0.5) / self.size).reshape(len(pts), *shp[1:])
            elif name == "box":
                out[name] = self._box_targets(pts).reshape(len(pts), *shp[1:])
            elif name == "angle":
                out[name] = self._angle_targets(pts).reshape(len(pts), *shp[1:])
        return [out[n] for n in self.input_names]

    def _angle_targets(self, pts: torch.Tensor) -> torch.Tensor:
        p = pts.detach().cpu().numpy()
        return torch.tensor([angle_of_eyes(q, self.scheme) for q in p],
                            dtype=torch.float32, device=pts.device)

    def _box_targets(self, pts: torch.Tensor) -> torch.Tensor:
        """(cx, cy, w, h) in unit coordinates: the policy's square around the upright points."""
        ang = self._angle_targets(pts)
        c, s = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
        x, y = pts[..., 0], pts[..., 1]
        ux, uy = c * x + s * y, -s * x + c * y  # rotate by -angle: upright frame
        lo_x, hi_x = ux.amin(1), ux.amax(1)
        lo_y, hi_y = uy.amin(1), uy.amax(1)
        mx, my = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
        cx = c[:, 0] * mx - s[:, 0] * my
        cy = s[:, 0] * mx + c[:, 0] * my
        side = self.policy.scale * torch.maximum(hi_x - lo_x, hi_y - lo_y)
        u = lambda v: (v + 0.5) / self.size  # noqa: E731
        return torch.stack([u(cx), u(cy), side / self.size, side / self.size], dim=1)

    def autocast(self):
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def decode(self, pred: torch.Tensor) -> np.ndarray:
        """Prediction blob -> crop points (N, K, 2)."""
        from landmarknet.decode import decode_heatmaps
        k = self.scheme.n_points
        p = pred.detach().float().cpu().numpy()
        if p.ndim == 4:
            pts, _ = decode_heatmaps(p[:, :k], stride=self.heatmap_stride or 1.0,
                                     refine=self.cfg.refine)
            return pts
        return p.reshape(len(p), k, 2) * self.size - 0.5

    # -- weight averaging -----------------------------------------------------------------
    def _averaged_tensors(self) -> dict[str, torch.Tensor]:
        """The net's floating-point weights and buffers, by state_dict key (what EMA averages)."""
        return {k: v for k, v in self.net.state_dict(keep_vars=True).items()
                if v.is_floating_point()}

    @torch.no_grad()
    def _update_ema(self, it: int) -> None:
        decay = min(float(self.cfg.ema), (1.0 + it) / (10.0 + it))
        live = self._averaged_tensors()
        keys = list(self.ema)
        torch._foreach_lerp_([self.ema[k] for k in keys], [live[k].detach() for k in keys],
                             1.0 - decay)

    @contextmanager
    def averaged_weights(self):
        """Inside: the net holds the EMA weights (when --ema is on); the live ones after."""
        if self.ema is None:
            yield
            return
        live = self._averaged_tensors()
        saved = {k: v.detach().clone() for k, v in live.items()}
        with torch.no_grad():
            for k, v in live.items():
                v.copy_(self.ema[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in live.items():
                    v.copy_(saved[k])

    # -- one iteration ----------------------------------------------------------------------
    def step(self, it: int, batches) -> torch.Tensor:
        """iter_size forward/backward passes and one solver update.

        Returns the loss tops (mean over iter_size) as a tensor on the training device, without
        waiting for it: the caller checks them in batches (:meth:`check_tops`), so the host
        queues the next iteration while the GPU still runs this one.
        """
        self.solver.zero_grad()
        sums = None
        for micro in range(self.iter_size):
            batch = next(batches)
            if batch["bad"]:
                self.n_bad += len(batch["bad"])
                if len(self.bad_examples) < 20:
                    self.bad_examples.extend(batch["bad"])
                    for b in batch["bad"]:
                        warnings.warn(f"bad sample skipped: {b}")
            args = self.inputs(batch)
            sync = (self.world > 1 and micro < self.iter_size - 1)
            ctx = self.model.no_sync() if sync and hasattr(self.model, "no_sync") else nullcontext()
            with ctx:
                with self.autocast():
                    out = self.model(*args)
                    loss = self.net.loss(out)
                tops = torch.stack([out[t].detach().float().sum() for t, _ in self.loss_tops])
                loss.backward()
            sums = tops if sums is None else sums + tops
        self.solver.apply_update()
        if self.ema is not None:
            self._update_ema(it)
        return sums / self.iter_size

    def check_tops(self, pending: list[tuple[int, torch.Tensor]]) -> list[dict[str, float]]:
        """Loss tops of the queued iterations as dicts; a NaN or inf stops the run, naming the
        first iteration and top where it appeared."""
        if not pending:
            return []
        vals = torch.stack([t for _, t in pending]).cpu().numpy().astype(np.float64)
        names = [t for t, _ in self.loss_tops]
        bad = ~np.isfinite(vals)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            keep = (f"the last good snapshot is {self.last_snapshot}"
                    if self.last_snapshot else "no snapshot was written in this run")
            raise TrainingDiverged(
                f"iteration {pending[row][0]}: loss top '{names[col]}' is {vals[row, col]} "
                f"(non-finite); training stopped, nothing written after it; {keep}")
        return [dict(zip(names, map(float, v))) for v in vals]

    # -- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """Val loss tops (mean per batch) and metrics over the whole val set (of the averaged
        weights under --ema)."""
        if self.val_set is None:
            return {}
        with self.averaged_weights():
            return self._validate()

    def _validate(self) -> dict:
        from landmarknet.metrics import evaluate_points
        self.net.eval()
        loader = eval_loader(self.val_set, self.batch, workers=min(self.cfg.workers, 2),
                             rank=self.rank, world=self.world)
        tops_sum = np.zeros(len(self.loss_tops))
        n_batches = 0
        preds, gts = [], []
        for batch in loader:
            args = self.inputs(batch)
            want = [t for t, _ in self.loss_tops] + ([self.pred_blob] if self.pred_blob else [])
            with self.autocast():
                out = self.net.run(dict(zip(self.input_names, args)), blobs=want)
            tops_sum += np.array([float(out[t].float().sum()) for t, _ in self.loss_tops])
            n_batches += 1
            if self.pred_blob is not None:
                preds.append(self.decode(out[self.pred_blob]))
                gts.append(batch["points"].numpy().astype(np.float64))
        self.net.train()
        res = {}
        if self.world > 1:
            import torch.distributed as dist
            gathered = [None] * self.world
            dist.all_gather_object(gathered, (tops_sum, n_batches, preds, gts))
            tops_sum = sum(g[0] for g in gathered)
            n_batches = sum(g[1] for g in gathered)
            preds = [p for g in gathered for p in g[2]]
            gts = [p for g in gathered for p in g[3]]
        tops = tops_sum / max(1, n_batches)
        wsum = sum(w * v for (_, w), v in zip(self.loss_tops, tops))
        res["val_loss"] = float(wsum)
        for (t, _), v in zip(self.loss_tops, tops):
            res[f"val_{self._col(t)}"] = float(v)
        if preds:
            m = evaluate_points(np.concatenate(preds), np.concatenate(gts), self.scheme)
            self.last_val = m
            for key in ("nme_io", "nme_ip", "auc08", "fr08", "fr10"):
                res[f"val_{key}"] = m[key]
        return res

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self, it: int) -> Path:
        """Write <prefix>_iter_N.caffemodel and .state.pt (both atomically); return the model."""
        from landmarknet.params import save_weights
        model = Path(f"{self.prefix}_iter_{it}.caffemodel")
        state = Path(f"{self.prefix}_iter_{it}.state.pt")
        if self.is_main:
            with self.averaged_weights():
                save_weights(self.net, model, self.parsed.net)
            st = {"format": STATE_FORMAT, "iter": int(it),
                  "solver": self.solver.state_dict(),
                  "net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
                  "torch_rng": torch.get_rng_state(),
                  "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                               else []),
                  "seed": int(self.seed), "n_bad": int(self.n_bad),
                  "solver_file": str(self.solver_path), "weights_file": model.name}
            if self.ema is not None:
                st["ema"] = {k: v.detach().cpu().clone() for k, v in self.ema.items()}
            _atomic_torch_save(st, state)
        self.last_snapshot = model
        return model

    def _load_state(self, path: Path) -> None:
        st = self._resume_state if self._resume_state is not None else _read_state(path)
        self._resume_state = None  # its tensors are copied into the net and solver below
        try:
            self._apply_state(path, st)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise TrainingError(f"--resume {path}: the state does not fit this run "
                                f"({type(exc).__name__}: {str(exc)[:300]})") from None

    def _apply_state(self, path: Path, st: dict) -> None:
        """Load weights, solver history, weight average and RNG states from ``st``."""
        missing = self.net.load_state_dict(st["net"], strict=False)
        if missing.missing_keys or missing.unexpected_keys:
            raise TrainingError(f"{path}: the state's weights do not fit this net "
                                f"(missing {missing.missing_keys[:3]}, unexpected "
                                f"{missing.unexpected_keys[:3]})")
        self.solver.load_state_dict(st["solver"])
        if self.ema is not None:
            if "ema" not in st:  # a run started without --ema: average from here on
                warnings.warn(f"{path}: no weight average in the state; --ema starts from the "
                              "resumed weights")
                for k, v in self._averaged_tensors().items():
                    self.ema[k].copy_(v)
            else:
                for k, v in self.ema.items():
                    v.copy_(st["ema"][k])
        elif "ema" in st and self.is_main:
            warnings.warn(f"{path}: the run kept a weight average (--ema); resuming without "
                          "--ema continues from the live weights and drops the average")
        torch.set_rng_state(st["torch_rng"])
        if st.get("cuda_rng") and torch.cuda.is_available():
            try:
                torch.cuda.set_rng_state_all(st["cuda_rng"])
            except Exception:  # noqa: BLE001 - a different GPU count
                pass
        self.start_iter = int(st["iter"])
        self.n_bad = int(st.get("n_bad", 0))
        if int(self.solver.iter) != self.start_iter:
            raise TrainingError(f"{path}: solver iteration {self.solver.iter} != state "
                                f"iteration {self.start_iter}")

    # -- logs ---------------------------------------------------------------------------------
    def _open_log(self):
        rows = []
        if self.cfg.resume and self.log_path.is_file():
            with open(self.log_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("iter") and
                        int(r["iter"]) < self.start_iter]
        self.history = rows
        f = open(self.log_path, "w", newline="")
        wr = csv.DictWriter(f, fieldnames=self.csv_fields)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: r.get(k, "") for k in self.csv_fields})
        f.flush()
        return f, wr

    def plot(self) -> None:
        """Redraw the PNG: each stage's loss (train, smoothed; val dashed) and val NME."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        def series(key):
            xs, ys = [], []
            for r in self.history:
                v = r.get(key, "")
                if v not in ("", None):
                    xs.append(int(r["iter"]))
                    ys.append(float(v))
            return xs, ys

        fig = Figure(figsize=(11, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        ax1 = fig.add_subplot(1, 2, 1)
        for t, _ in self.loss_tops:
            x, y = series(self._col(t))
            if x:
                line, = ax1.plot(x, y, label=t)
                xv, yv = series(f"val_{self._col(t)}")
                if xv:
                    ax1.plot(xv, yv, "--", color=line.get_color(), marker="o", ms=3)
        ax1.set_yscale("log")
        ax1.set_xlabel("iteration")
        ax1.set_ylabel("loss top (train; val dashed)")
        ax1.grid(True, alpha=0.3)
        ax1.legend(fontsize=7)
        ax2 = fig.add_subplot(1, 2, 2)
        x, y = series("val_nme_io")
        if x:
            ax2.plot(x, y, marker="o", ms=3, label="val NME (inter-ocular)")
            ax2.legend(fontsize=8)
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("NME")
        ax2.grid(True, alpha=0.3)
        fig.suptitle(f"{self.prefix.name}: {self.net_path}")
        tmp = self.curves_path.with_name(self.curves_path.name + ".tmp.png")
        fig.savefig(tmp, format="png")
        os.replace(tmp, self.curves_path)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train from start_iter to max_iter; returns a summary."""
        batches = iter(self.batch_source(self.start_iter * self.iter_size))
        f, writer = (self._open_log() if self.is_main else (None, None))
        window: deque = deque(maxlen=self.average_loss)
        log_every = self.cfg.log_every or self.display or 0
        bar = None
        if self.cfg.progress and self.is_main:
            from tqdm import tqdm
            bar = tqdm(total=self.max_iter, initial=self.start_iter, unit="it", dynamic_ncols=True)
        t0 = time.perf_counter()
        t_last, it_last = t0, self.start_iter
        first_tops = last_tops = None
        pending: list[tuple[int, torch.Tensor]] = []
        it = self.start_iter
        try:
            while True:
                row: dict = {}
                at_end = it >= self.max_iter
                if self.test_interval and it % self.test_interval == 0 and \
                        (it > 0 or self.test_initialization) and \
                        (not at_end or it > self.start_iter or it == 0):
                    row.update(self.validate())
                if at_end:
                    if row and self.is_main:
                        row.update(iter=it, lr=self.solver.lr_at(it))
                        self._write(writer, f, row)
                    break
                pending.append((it, self.step(it, batches)))
                nxt = it + 1
                due = (len(pending) >= 25 or nxt >= self.max_iter
                       or (log_every and it % log_every == 0)
                       or (self.snapshot_every and nxt % self.snapshot_every == 0)
                       or (self.test_interval and nxt % self.test_interval == 0))
                if due:
                    for tops in self.check_tops(pending):
                        total = sum(w * tops[t] for t, w in self.loss_tops)
                        window.append([total] + [tops[t] for t, _ in self.loss_tops])
                        first_tops = first_tops or dict(tops, loss=total)
                        last_tops = dict(tops, loss=total)
                    if bar is not None:
                        bar.update(len(pending))
                        bar.set_postfix(loss=f"{last_tops['loss']:.4g}",
                                        lr=f"{self.solver.lr_at(it):.3g}")
                    pending.clear()
                if log_every and it % log_every == 0:
                    sm = np.mean(np.array(window), axis=0)
                    now = time.perf_counter()
                    row["loss"] = sm[0]
                    row.update({self._col(t): v for (t, _), v in zip(self.loss_tops, sm[1:])})
                    row["it_per_s"] = (it + 1 - it_last) / max(now - t_last, 1e-9)
                    t_last, it_last = now, it + 1
                if row and self.is_main:
                    row.update(iter=it, lr=self.solver.lr_at(it),
                               elapsed_s=time.perf_counter() - t0, bad_samples=self.n_bad)
                    self._write(writer, f, row)
                it += 1
                if self.snapshot_every and it % self.snapshot_every == 0:
                    self.snapshot(it)
            if self.last_snapshot is None or \
                    self.last_snapshot != Path(f"{self.prefix}_iter_{it}.caffemodel"):
                if it > self.start_iter:
                    self.snapshot(it)
        finally:
            if bar is not None:
                bar.close()
            if f is not None:
                f.close()
            if self.is_main and self.history:
                try:
                    self.plot()
                except Exception as exc:  # noqa: BLE001 - a plot never kills a run
                    warnings.warn(f"curves not drawn: {exc}")
        elapsed = time.perf_counter() - t0
        n_it = it - self.start_iter
        summary = {"iters": n_it, "final_iter": it, "seconds": elapsed,
                   "it_per_s": n_it / max(elapsed, 1e-9), "first": first_tops,
                   "last": last_tops, "snapshot": str(self.last_snapshot),
                   "log": str(self.log_path), "curves": str(self.curves_path),
                   "bad_samples": self.n_bad, "data": self.data_report,
                   "val": self.last_val}
        if self.cfg.bundle and self.is_main and self.last_snapshot is not None:
            summary["bundle"] = str(self.write_bundle())
        return summary

    def _write(self, writer, f, row: dict) -> None:
        clean = {k: row.get(k, "") for k in self.csv_fields}
        writer.writerow(clean)
        f.flush()
        self.history.append(clean)
        if len(self.history) % 100 == 1 or any(k.startswith("val_") and row[k] != ""
                                                for k in row):
            try:
                self.plot()
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"curves not drawn: {exc}")

    def write_bundle(self) -> Optional[Path]:
        """OUT/<prefix>_bundle: deploy.prototxt + last weights + model.json (when deploy exists)."""
        from landmarknet.bundle import save_bundle
        deploy = self.net_path.parent / "deploy.prototxt"
        if not deploy.is_file():
            return None
        metrics = {}
        if self.last_val:
            metrics = {k: v for k, v in self.last_val.items() if k != "per_region"}
            metrics["per_region"] = self.last_val.get("per_region")
            metrics["split"] = str(self.cfg.val)
        heat = "heatmaps" in self.input_names
        decoding = ({"decoding": "heatmap", "stride": self.heatmap_stride, "offset": None,
                     "channels": [0, self.scheme.n_points], "refine": self.cfg.refine,
                     "blur_sigma": 0.0} if heat else
                    {"decoding": "regression", "unit": "unit"})
        if self.pred_blob:
            decoding["blob"] = self.pred_blob
        prov = {"solver": str(self.solver_path), "net": str(self.net_path),
                "data": str(self.cfg.data), "val": str(self.cfg.val), "iter": self.last_iter,
                "weights_init": str(self.cfg.weights) if self.cfg.weights else None,
                "sigma": self.cfg.sigma, "augment": self.cfg.augment.__dict__,
                "terms": "trained on research-only data; non-commercial use"}
        if self.ema is not None:
            prov["ema"] = self.cfg.ema
        with self.averaged_weights():
            return save_bundle(Path(f"{self.prefix}_bundle"), self.net, deploy,
                               scheme=self.scheme.n_points, input_size=self.size,
                               decoding=decoding, metrics=metrics, provenance=prov,
                               crop_scale=self.policy.scale, mean=self.cfg.mean,
                               scale=self.cfg.scale, channels=self.channels,
                               name=self.prefix.name)

    @property
    def last_iter(self) -> Optional[int]:
        if self.last_snapshot is None:
            return None
        return int(str(self.last_snapshot).rsplit("_iter_", 1)[1].split(".")[0])


def train(cfg: TrainConfig) -> dict:
    """Build a Trainer and run it (see module doc)."""
    return Trainer(cfg).run()
