"""``landmarknet detect``: faces and their landmarks in images, folders and videos.

For each input, one JSON file in OUT_DIR (``NAME.json``) and an overlay (``NAME_overlay.png``);
a video gets ``NAME.json`` as a list of per-frame objects and ``NAME_annotated.mp4`` with the
points smoothed over time (One-Euro filter). With ``--json`` every object is also printed to
stdout, one per line (images: one per input; videos: one per frame, with "frame")::

    {"input": PATH, "faces": [{"box": [x, y, w, h], "score": s,
                               "landmarks": [[x, y], ...], "confidence": c}], "error": null}

A video (or a camera: ``--camera 0``, or any OpenCV capture string such as a URL) runs the
detector on the first frame, every ``--detect-every`` frames and when a face is lost; on the
other frames each face is followed from the previous frame's landmarks
(``landmarknet.detect.tracker``).

Boxes and points are in pixels of the input image (pixel centres at integer coordinates).
``score`` is the detector's; ``confidence`` the landmark model's (null without one, or for a
regression model). A bad input gives ``"faces": [], "error": "why"`` and the run goes on.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from landmarknet.detect.inputs import InputItem
    from landmarknet.detect.outputs import OutputNames, VideoOutput
    from landmarknet.detect.pipeline import ImageResult
    from landmarknet.detect.tracker import VideoTracker

from landmarknet.jsontext import json_text

EXAMPLE = """\
example:
  landmarknet detect samples/astronaut.png -o out/
  landmarknet detect photos/ clip.mp4 --model heatmap4_68 --json > faces.jsonl
  landmarknet detect group.jpg --detector haar --indices --show-heatmaps -o out/
  landmarknet detect --camera 0 --max-frames 300 --model squeeze77 -o out/
  landmarknet detect photos/ --device cuda --batch 64 --no-overlay
"""

#: The bundle (a name or folder) used when --model is not given; None: the installed bundle
#: marked "default": true in its model.json (landmarknet.models.default_bundle).
DEFAULT_MODEL: Optional[str] = None

_REPORTED = {"mtcnn": "detection boxes and MTCNN's 5 points are reported",
             "haar": "detection boxes are reported (the Haar detector gives no points)"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("detect", help="find faces and their landmarks in images, folders, videos",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``detect`` (shared with tools/detect.py)."""
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, folders, or video files")
    p.add_argument("--camera", metavar="SOURCE",
                   help="also read a live source: a camera index (0) or any OpenCV capture "
                        "string (a URL, a file, a GStreamer pipeline); stops at its end, after "
                        "--max-frames, on Ctrl-C, or when no frame comes for --frame-timeout s")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|auto",
                   help="where the landmark net and MTCNN run (default cpu; auto: cuda when "
                        "torch sees a GPU)")
    p.add_argument("--model", metavar="NAME|FOLDER",
                   help="an installed bundle's name (`landmarknet models` lists them) or a "
                        "bundle folder (deploy.prototxt, .caffemodel, model.json); 'none' "
                        "reports the detector's points only (default: the installed bundle "
                        "marked default)")
    p.add_argument("--detector", choices=("mtcnn", "haar"), default="mtcnn",
                   help="face detector (default mtcnn: run by landmarknet from its Caffe files; "
                        "haar: OpenCV's cascade, boxes only)")
    p.add_argument("-o", "--out-dir", type=Path, default=Path("out"), metavar="OUT_DIR",
                   help="where JSON files, overlays, figures and videos go (default out/)")
    p.add_argument("--json", action="store_true",
                   help="also print one JSON object per line to stdout (per image or frame); "
                        "the table and messages then go to stderr")
    p.add_argument("--show-heatmaps", action="store_true",
                   help="save NAME_heatmaps.png, a figure of each face's heatmaps (heatmap models)")
    p.add_argument("--flip-test", choices=("on", "off"),
                   help="also run each face mirrored and average (about twice the landmark "
                        "net's time; default: the bundle's model.json output.flip_test)")
    p.add_argument("--batch", type=int, default=16, metavar="N",
                   help="faces per landmark-network batch (default 16)")
    p.add_argument("--indices", action="store_true", help="write point indices on the overlay")
    p.add_argument("--min-face", type=float, default=20.0, metavar="PX",
                   help="smallest face searched, in pixels (default 20)")
    p.add_argument("--no-align", action="store_true",
                   help="upright crops for the landmark model (default: a face's crop is turned "
                        "so its eyes are level, from the detector's eye points; MTCNN gives "
                        "them, Haar does not)")
    p.add_argument("--any-roll", action="store_true",
                   help="mtcnn: also search the picture turned by 90, 180 and 270 degrees, so "
                        "faces at any in-plane angle are found (about 4x the detector's time)")
    p.add_argument("--no-smooth", action="store_true", help="videos: no temporal smoothing")
    p.add_argument("--max-frames", type=int, default=0, metavar="N",
                   help="videos and --camera: stop after N frames (default: all)")
    from landmarknet.detect.tracker import DEFAULT_DETECT_EVERY, DEFAULT_MIN_CONFIDENCE
    from landmarknet.detect.video import DEFAULT_FRAME_TIMEOUT
    p.add_argument("--detect-every", type=int, default=DEFAULT_DETECT_EVERY, metavar="N",
                   help="videos: run the detector every N frames (and when a face is lost); "
                        "in between, faces are followed from the previous frame's landmarks "
                        f"(default {DEFAULT_DETECT_EVERY}; 1: the detector on every frame)")
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                   metavar="C", help="videos: a followed face whose landmark confidence "
                   f"falls below C is lost and the detector runs (default "
                   f"{DEFAULT_MIN_CONFIDENCE}; heatmap models)")
    p.add_argument("--frame-timeout", type=float, default=DEFAULT_FRAME_TIMEOUT, metavar="S",
                   help=f"--camera: give up when no frame comes for S seconds (default "
                        f"{DEFAULT_FRAME_TIMEOUT:g})")
    p.add_argument("--no-overlay", action="store_true", help="write JSON only")
    from landmarknet.cli.common import add_memory_argument, pixels_arg
    p.add_argument("--max-pixels", type=pixels_arg, default=None, metavar="N",
                   help="refuse images (and video frames) larger than N pixels, from the "
                        "file's header before decoding (default 100000000; 'none': no limit)")
    add_memory_argument(p)


# ---------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One line of the summary table."""

    input: str
    faces: str
    score: str
    points: str
    seconds: float
    note: str = ""


@dataclass
class _Run:
    """One command's state: its options, the pipeline, where results go, what to print."""

    args: argparse.Namespace
    landmarker: object
    model: object
    out_dir: Path
    rows: list[_Row] = field(default_factory=list)
    names: "OutputNames" = field(default_factory=lambda: _output_names())
    n_errors: int = 0

    def say(self, text: str) -> None:
        """A message for the user (stderr under --json, else stdout)."""
        print(text, file=sys.stderr if self.args.json else sys.stdout, flush=True)

    def emit(self, obj: dict) -> None:
        """A JSON object to stdout (under --json)."""
        if self.args.json:
            sys.stdout.write(json_text(obj) + "\n")
            sys.stdout.flush()

    def heatmaps_wanted(self) -> bool:
        """--show-heatmaps with a model that has heatmaps to show."""
        return (self.args.show_heatmaps and self.model is not None
                and self.model.decodes_heatmaps)


def _output_names() -> "OutputNames":
    """Unique stems for this run's files (imported here: OpenCV loads with it)."""
    from landmarknet.detect.outputs import OutputNames
    return OutputNames()


def _warn(message: str) -> None:
    """A warning on stderr, prefixed with the command's name."""
    print(f"detect: {message}", file=sys.stderr, flush=True)


def resolve_model(value: Optional[str], device: str = "cpu"):
    """The LandmarkModel to use and a note for the user, or None and the reason there is none
    (``landmarknet.detect.model_choice.resolve_model`` with this module's DEFAULT_MODEL)."""
    from landmarknet.detect.model_choice import resolve_model as choose
    return choose(value, device, DEFAULT_MODEL)


def run(args: argparse.Namespace) -> int:
    """Detect faces and landmarks in every input; 0 when every input was read, else 1."""
    from landmarknet.cli.common import memory_budget
    with memory_budget(args):  # the landmark model and the detector's nets are built inside
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from landmarknet.cli.common import UsageError
    from landmarknet.detect import get_detector, resolve_device
    from landmarknet.detect.inputs import expand_inputs
    from landmarknet.detect.pipeline import Landmarker

    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    if not args.inputs and args.camera is None:
        raise UsageError("give at least one INPUT (image, folder, video) or --camera SOURCE")
    if args.detect_every < 1:
        raise UsageError(f"--detect-every must be at least 1, got {args.detect_every}")
    if not args.frame_timeout > 0:
        raise UsageError(f"--frame-timeout must be positive, got {args.frame_timeout}")
    device = resolve_device(args.device)
    if args.min_face < 12:
        raise UsageError(f"--min-face must be at least 12 pixels, got {args.min_face}")
    from landmarknet.detect.images import DEFAULT_MAX_PIXELS
    if args.max_pixels is None:
        args.max_pixels = DEFAULT_MAX_PIXELS
    model, note = resolve_model(args.model, device)
    if model is not None and args.flip_test:
        model.spec.flip_test = args.flip_test == "on"
    if model is None:
        note = f"{note}; {_REPORTED[args.detector]}"
    if args.any_roll and args.detector != "mtcnn":
        raise UsageError("--any-roll needs --detector mtcnn")
    turns = {"turns": (0, 90, 180, 270)} if args.any_roll else {}
    on_device = {"device": device} if device != "cpu" and args.detector == "mtcnn" else {}
    detector = get_detector(args.detector, min_face=args.min_face, **turns, **on_device)
    out_dir = args.out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"-o {out_dir}: cannot create the folder ({exc.strerror})") from None
    r = _Run(args, Landmarker(detector, model, args.batch, keep_heatmaps=args.show_heatmaps,
                              align=not args.no_align),
             model, out_dir)
    print(f"detect: {note}" + ("" if device == "cpu" else f"; on {device}"), file=sys.stderr,
          flush=True)
    if args.show_heatmaps and (model is None or not model.decodes_heatmaps):
        print("detect: --show-heatmaps: " + ("no landmark model, so no heatmaps" if model is None
              else f"model {model.name} decodes by regression, so no heatmaps"),
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    _process(r, expand_inputs(args.inputs, args.camera))
    _print_table(r)
    r.say(f"{len(r.rows)} input(s) in {time.perf_counter() - t0:.1f} s; results in {out_dir}/"
          + (f"; {r.n_errors} could not be read" if r.n_errors else ""))
    return 1 if r.n_errors else 0


def _process(r: _Run, items: list["InputItem"]) -> None:
    """Images go through the batched pipeline in runs; each video on its own."""
    run_of_images: list["InputItem"] = []
    for item in items:
        if item.kind == "image":
            run_of_images.append(item)
            continue
        _images(r, run_of_images)
        run_of_images = []
        if item.kind in ("video", "camera"):
            _video(r, item)
        else:
            _error(r, item.path, item.error)
    _images(r, run_of_images)


def _error(r: _Run, path: Path, message: str, name: Optional[str] = None) -> None:
    """An input that could not be read: its JSON, its message and its table row."""
    from landmarknet.detect.outputs import result_json

    r.n_errors += 1
    obj = result_json(path, error=message)
    _write_json(r, name or r.names.name_for(path), obj)
    r.emit(obj)
    _warn(message)
    r.rows.append(_Row(str(path), "-", "-", "-", 0.0, "error: " + message.split(": ", 1)[-1]))


def _write_json(r: _Run, name: str, obj: "dict | list[dict]") -> None:
    """NAME.json, or a message when it cannot be written."""
    from landmarknet.detect.outputs import write_json

    path = r.out_dir / f"{name}.json"
    try:
        write_json(path, obj)
    except OSError as exc:
        _warn(f"cannot write {path}: {exc.strerror}")


# -- images ------------------------------------------------------------------------------------


def _images(r: _Run, items: list["InputItem"]) -> None:
    """A run of image items through the pipeline: JSON, pictures and a table row each."""
    from landmarknet.detect.outputs import result_json
    from landmarknet.detect.runs import detect_images

    if not items:
        return
    for done in detect_images(r.landmarker, [item.path for item in items], r.args.max_pixels):
        name = r.names.name_for(done.path)
        if done.image is None:
            _error(r, done.path, done.error, name)
            continue
        res = done.result
        obj = result_json(done.path, res.faces)
        _write_json(r, name, obj)
        r.emit(obj)
        _write_pictures(r, name, done.path, done.image, res)
        r.rows.append(_image_row(done.path, res, "; ".join(done.notes)))


def _image_row(path: Path, res: "ImageResult", note: str) -> _Row:
    """An image's line of the table: faces, best score, points per face, time."""
    if not res.faces:
        note = "no face found" + (f"; {note}" if note else "")
    return _Row(str(path), str(len(res.faces)),
                f"{max(f.score for f in res.faces):.3g}" if res.faces else "-",
                str(len(res.faces[0].landmarks)) if res.faces and
                res.faces[0].landmarks is not None else "0",
                res.detect_seconds + res.landmark_seconds, note)


def _write_pictures(r: _Run, name: str, path: Path, image, res: "ImageResult") -> None:
    """The overlay and heatmap figure of an image, or a message when they cannot be written."""
    from landmarknet.detect.outputs import write_pictures

    title = f"{path.name}: {r.model.name} heatmaps" if r.heatmaps_wanted() else None
    try:
        write_pictures(r.out_dir, name, image, res.faces, draw_overlay=not r.args.no_overlay,
                       indices=r.args.indices, heatmaps_title=title)
    except OSError as exc:
        _warn(f"{path}: cannot write pictures ({exc})")


# -- video -------------------------------------------------------------------------------------


def _video(r: _Run, item: "InputItem") -> None:
    """A video file or a live source: frames through the tracker, one JSON object per frame."""
    from landmarknet.detect import ImageError
    from landmarknet.detect.outputs import VideoOutput
    from landmarknet.detect.runs import process_video
    from landmarknet.detect.tracker import VideoTracker
    from landmarknet.detect.video import open_frames

    live = item.kind == "camera"
    name = r.names.name_for(Path("camera") if live else item.path)
    limit = r.args.max_frames if r.args.max_frames > 0 else None
    try:
        frames, fps = open_frames(item.source if live else item.path, live, max_frames=limit,
                                  frame_timeout=r.args.frame_timeout,
                                  max_pixels=r.args.max_pixels)
    except ImageError as exc:
        _error(r, item.path, str(exc), name)
        return
    tracker = VideoTracker(r.landmarker.detector, r.model, detect_every=r.args.detect_every,
                           min_confidence=r.args.min_confidence, smooth=not r.args.no_smooth,
                           align=r.landmarker.align)
    tracker.landmarker.keep_heatmaps = r.landmarker.keep_heatmaps
    out = VideoOutput(r.out_dir, name, item.path, fps, draw_overlay=not r.args.no_overlay,
                      indices=r.args.indices,
                      heatmaps_model=r.model.name if r.heatmaps_wanted() else None,
                      on_frame=r.emit, warn=_warn)
    end = process_video(tracker, frames, out)
    if end.stopped:
        _warn(f"{item.path}: {end.stopped}")
    if not out.frames_json:
        where = f"({end.stopped or 'the source ended'})" if live else "from this video"
        _error(r, item.path, f"{item.path}: no frame could be decoded {where}", name)
    else:
        _write_json(r, name, out.frames_json)
        r.rows.append(_video_row(item.path, live, fps, out, tracker))
    if end.interrupted and not live:
        raise KeyboardInterrupt  # Ctrl-C during a video file stops the whole run


def _video_row(path: Path, live: bool, fps: float, out: "VideoOutput",
               tracker: "VideoTracker") -> _Row:
    """A video's line of the table: faces per frame, time, frames, detector runs."""
    n, st = len(out.frames_json), tracker.stats
    return _Row(str(path), f"{out.n_faces / n:.2g}/frame", "-", "", out.seconds,
                f"{'camera' if live else 'video'}: {n} frames"
                + (f" at {fps:.3g} fps" if fps else "")
                + f", detector on {len(st.detected)}"
                + ("" if tracker.smoother is None else ", smoothed"))


# -- table -------------------------------------------------------------------------------------


def _print_table(r: _Run) -> None:
    """The summary table, one line per input."""
    if not r.rows:
        return
    w = min(48, max(len("input"), *(len(x.input) for x in r.rows)))
    lines = [f"{'input':<{w}}  {'faces':>9}  {'score':>6}  {'points':>6}  {'time s':>6}  note"]
    for x in r.rows:
        inp = x.input if len(x.input) <= w else "..." + x.input[-(w - 3):]
        lines.append(f"{inp:<{w}}  {x.faces:>9}  {x.score:>6}  {x.points:>6}  "
                     f"{x.seconds:>6.2f}  {x.note}")
    r.say("\n".join(lines))
