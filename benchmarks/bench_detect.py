#!/usr/bin/env python
"""End-to-end speed of ``detect``: milliseconds per stage and frames (images) per second.

Three workloads, each as ``landmarknet detect`` runs it:

* ``video``: a 640x480 mp4 made in a temporary folder from a real face picture
  (samples/astronaut.png, or --picture) sliding a few pixels a frame, read with OpenCV, faces
  followed by :class:`landmarknet.detect.tracker.VideoTracker` (detector every --detect-every
  frames), smoothed, drawn and encoded with OpenCV's VideoWriter;
* ``images``: a folder of pictures, one at a time (read, detect, landmarks, overlay, PNG
  encoded in memory);
* ``batch``: the same folder through the batched pipeline (``Landmarker``, --batch faces per
  forward pass), the way ``detect FOLDER`` and the GPU run it.

The folder is --folder, or --images N pictures copied from ytf68/val (cycled) into a temporary
folder. Stages: decode (file or video frame), detect, crop, net (the landmark network), points
(decoding heatmaps or regression output), smooth, draw, encode. Each stage's time is its own
(a stage inside another is subtracted from it); "other" is the rest of the wall time (Python
glue). Numbers are per frame (or image), the median over --repeats passes; fps is frames over
the pass's wall time.

    python benchmarks/bench_detect.py --threads 2                       # CPU, default model
    python benchmarks/bench_detect.py --threads 2 --model squeeze77 --workloads video
    python benchmarks/bench_detect.py --device cuda --images 1000 --workloads batch \\
        --batch 64 --json gpu_detect.json                              # images/s on a GPU
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

STAGES = ("decode", "detect", "crop", "net", "points", "smooth", "draw", "encode")


class StageClock:
    """Exclusive wall time per stage: a stage timed inside another is not counted twice."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._stack: list[list] = []  # [stage, start, time of children]

    @contextmanager
    def stage(self, name: str):
        """Time the block as ``name`` (minus any stage timed inside it)."""
        self._stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            name, start, inner = self._stack.pop()
            total = time.perf_counter() - start
            self.seconds[name] += total - inner
            if self._stack:
                self._stack[-1][2] += total

    def wrap(self, owner, attr: str, name: str) -> Callable[[], None]:
        """Time every call of ``owner.attr`` as stage ``name``; returns the undo."""
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            with self.stage(name):
                return original(*args, **kwargs)
        setattr(owner, attr, timed)
        had_own = attr in getattr(owner, "__dict__", {})
        return (lambda: setattr(owner, attr, original)) if had_own else \
            (lambda: delattr(owner, attr))

    def reset(self) -> None:
        """Zero all stages."""
        self.seconds = dict.fromkeys(STAGES, 0.0)


def instrument(clock: StageClock, model, detector) -> list[Callable[[], None]]:
    """Wrap the pipeline's stages (the model's crop and run, heatmap/regression decoding, the
    detector) with the clock; the undos."""
    import landmarknet.infer as infer
    undo = [clock.wrap(detector, "detect", "detect")]
    if model is not None:
        undo += [clock.wrap(model, "prepare", "crop"), clock.wrap(model, "run", "net"),
                 clock.wrap(infer, "decode_heatmaps", "points"),
                 clock.wrap(infer, "decode_regression", "points")]
    return undo


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


# -- workloads ---------------------------------------------------------------------------------


def make_video(folder: Path, picture: Path, frames: int, step: float) -> Path:
    """A 640x480 mp4 of the picture's face sliding ``step`` px a frame."""
    import cv2

    from landmarknet.detect.video import moving_face_frames, write_video
    image = cv2.imread(str(picture))
    if image is None:
        raise SystemExit(f"bench_detect: cannot read {picture}")
    path = folder / "moving_face.mp4"
    write_video(path, (f for f, _ in moving_face_frames(image, frames, step=step)), 30.0)
    return path


def make_folder(folder: Path, n: int, source: Path) -> Path:
    """``n`` pictures copied (cycled) from the images of ``source``."""
    from landmarknet.detect.images import IMAGE_SUFFIXES
    pictures = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not pictures:
        raise SystemExit(f"bench_detect: no pictures in {source}")
    out = folder / "pictures"
    out.mkdir()
    for i in range(n):
        src = pictures[i % len(pictures)]
        shutil.copyfile(src, out / f"{i:05d}{src.suffix.lower()}")
    return out


def run_video(args, clock: StageClock, model, detector, video: Path) -> dict:
    """One pass over the video as ``detect VIDEO`` does it; frames and wall seconds."""
    import cv2

    from landmarknet.detect.draw import overlay
    from landmarknet.detect.tracker import VideoTracker
    tracker = VideoTracker(detector, model, detect_every=args.detect_every)
    undo = [clock.wrap(tracker.smoother, "update", "smooth")] if tracker.smoother else []
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    out = Path(tempfile.mkdtemp(prefix="bench_detect_out_")) / "annotated.mp4"
    writer = None
    n, faces = 0, 0
    t0 = time.perf_counter()
    try:
        while True:
            with clock.stage("decode"):
                ok, frame = cap.read()
            if not ok:
                break
            res = tracker.step(frame, n / fps, n)
            faces += len(res.faces)
            with clock.stage("draw"):
                shown = overlay(frame, res.faces)
            with clock.stage("encode"):
                if writer is None:
                    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (frame.shape[1], frame.shape[0]))
                writer.write(shown)
            n += 1
        _sync(args.device)
        wall = time.perf_counter() - t0
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        for u in undo:
            u()
        shutil.rmtree(out.parent, ignore_errors=True)
    return {"frames": n, "wall": wall, "faces": faces, "detector_runs": len(tracker.stats.detected)}


def run_images(args, clock: StageClock, model, detector, folder: Path, batched: bool) -> dict:
    """One pass over the folder: one image at a time, or batched through the Landmarker."""
    import cv2

    from landmarknet.detect.draw import overlay
    from landmarknet.detect.images import IMAGE_SUFFIXES, read_image
    from landmarknet.detect.pipeline import Landmarker
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    landmarker = Landmarker(detector, model, batch=args.batch if batched else 1)

    def stream():
        for i, p in enumerate(paths):
            with clock.stage("decode"):
                image = read_image(p).image
            yield i, image

    n, faces = 0, 0
    t0 = time.perf_counter()
    for _, image, res in landmarker.process(stream()):
        faces += len(res.faces)
        if not args.no_draw:
            with clock.stage("draw"):
                shown = overlay(image, res.faces)
            with clock.stage("encode"):
                cv2.imencode(".png", shown)
        n += 1
    _sync(args.device)
    return {"frames": n, "wall": time.perf_counter() - t0, "faces": faces,
            "detector_runs": n}


# -- main --------------------------------------------------------------------------------------


def measure(args, name: str, one_pass: Callable[[], dict], clock: StageClock) -> dict:
    """Warm up once, then --repeats passes: median per-frame ms of each stage and fps."""
    one_pass()
    passes = []
    for _ in range(args.repeats):
        clock.reset()
        r = one_pass()
        n = max(1, r["frames"])
        ms = {s: 1000 * clock.seconds[s] / n for s in STAGES}
        ms["other"] = max(0.0, 1000 * r["wall"] / n - sum(ms.values()))
        passes.append({"ms": ms, "fps": r["frames"] / r["wall"], **r})
    med = {k: statistics.median(p["ms"][k] for p in passes) for k in passes[0]["ms"]}
    last = passes[-1]
    return {"workload": name, "frames": last["frames"], "faces_per_frame":
            round(last["faces"] / max(1, last["frames"]), 3),
            "detector_runs": last["detector_runs"],
            "fps": statistics.median(p["fps"] for p in passes),
            "fps_all": [round(p["fps"], 2) for p in passes],
            "ms": {k: round(v, 3) for k, v in med.items()}}


def print_table(rows: list[dict], header: str) -> None:
    """The per-stage table."""
    cols = list(STAGES) + ["other"]
    print(header)
    print(f"{'workload':<8} {'frames':>6} {'det.runs':>8} " + " ".join(f"{c:>7}" for c in cols)
          + f" {'total':>7} {'fps':>7}")
    for r in rows:
        total = sum(r["ms"].values())
        print(f"{r['workload']:<8} {r['frames']:>6} {r['detector_runs']:>8} "
              + " ".join(f"{r['ms'][c]:>7.2f}" for c in cols) + f" {total:>7.2f} "
              f"{r['fps']:>7.1f}")
    print("(milliseconds per frame or image, median of the passes; fps = frames / wall time)")


def main(argv=None) -> int:
    from landmarknet.detect.tracker import DEFAULT_DETECT_EVERY
    from landmarknet.paths import REPO_ROOT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None,
                    help="an installed bundle or a bundle folder (default: the default bundle)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--detect-every", type=int, default=DEFAULT_DETECT_EVERY)
    ap.add_argument("--flip-test", choices=("on", "off"),
                    help="the landmark net's mirrored pass (default: the bundle's setting)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per workload")
    ap.add_argument("--workloads", default="video,images,batch",
                    help="comma-separated: video, images, batch")
    ap.add_argument("--frames", type=int, default=150, help="video length in frames")
    ap.add_argument("--step", type=float, default=3.0, help="video: face motion, px a frame")
    ap.add_argument("--picture", type=Path, default=REPO_ROOT / "samples" / "astronaut.png",
                    help="the face picture the video is made from")
    ap.add_argument("--folder", type=Path, help="images/batch: a folder of pictures")
    ap.add_argument("--images", type=int, default=50,
                    help="images/batch without --folder: N pictures from ytf68/val")
    ap.add_argument("--batch", type=int, default=16, help="batch workload: faces per pass")
    ap.add_argument("--no-draw", action="store_true",
                    help="images/batch: skip the overlay and its encoding (pure throughput)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)

    from landmarknet.runtime import apply_cpu_policy, choose_openmp_waiting
    choose_openmp_waiting()
    threads = apply_cpu_policy(args.threads)
    import torch

    from landmarknet.cli.detect import resolve_model
    from landmarknet.detect import get_detector, resolve_device
    args.device = resolve_device(args.device)
    model, note = resolve_model(args.model, args.device)
    if model is not None and args.flip_test:
        model.spec.flip_test = args.flip_test == "on"
    detector = get_detector("mtcnn", **({"device": args.device}
                                        if args.device != "cpu" else {}))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - {"video", "images", "batch"}
    if unknown:
        raise SystemExit(f"bench_detect: unknown workloads {sorted(unknown)}")
    clock = StageClock()
    undo = instrument(clock, model, detector)
    tmp = Path(tempfile.mkdtemp(prefix="bench_detect_"))
    rows = []
    try:
        if "video" in workloads:
            video = make_video(tmp, args.picture, args.frames, args.step)
            rows.append(measure(args, "video", lambda: run_video(args, clock, model, detector,
                                                                  video), clock))
        if {"images", "batch"} & set(workloads):
            from landmarknet.paths import shared_dir
            folder = args.folder or make_folder(tmp, args.images,
                                                shared_dir() / "data" / "ytf68" / "val")
            for w, batched in (("images", False), ("batch", True)):
                if w in workloads:
                    rows.append(measure(args, w, lambda b=batched: run_images(
                        args, clock, model, detector, folder, b), clock))
    finally:
        for u in undo:
            u()
        shutil.rmtree(tmp, ignore_errors=True)
    info = {"model": model.name if model is not None else None, "device": args.device,
            "threads": threads, "detect_every": args.detect_every, "repeats": args.repeats,
            "batch": args.batch, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "flip_test": bool(model is not None and model.spec.flip_test)}
    print_table(rows, f"bench_detect: {note}; device {args.device}, {threads} threads, "
                      f"detector every {args.detect_every} frames (video)")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
