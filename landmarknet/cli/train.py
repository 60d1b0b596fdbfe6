"""``landmarknet train``: train a net from a Caffe solver.prototxt on landmark data."""
from __future__ import annotations

import argparse
from pathlib import Path

from landmarknet.cli.common import (add_fit_arguments, add_memory_argument, fit_from_args,
                                    json_text, memory_budget)

EXAMPLE = """\
examples:
  landmarknet train --solver prototxt/heatmap4_68/solver.prototxt \\
      --data ../shared/data/ytf68/train --val ../shared/data/ytf68/val --out runs/heatmap4_68
  landmarknet train --solver prototxt/heatmap4_68/solver.prototxt --data ../shared/data/ytf68 \\
      --resume runs/heatmap4_68/heatmap4_68_iter_2000.state.pt --out runs/heatmap4_68
  torchrun --nproc_per_node 2 -m landmarknet.cli.main train --solver S.prototxt \\
      --data D --device cuda --amp --channels-last        # DDP, one process per GPU
  landmarknet train --solver S.prototxt --data D --ema 0.999   # deploy the averaged weights

--data is a 300W folder (image + .pts), a folder with train/ and val/, or a CelebA root
(partition 0 trains, partition 1 validates). Snapshots, the CSV log, the PNG curves and a
model bundle go to OUT (or next to the solver's snapshot_prefix).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("train", help="train from a solver.prototxt (snapshots, logs, resume)",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solver", type=Path, required=True, help="the solver.prototxt")
    p.add_argument("--weights", type=Path, help="initial weights (.caffemodel/.h5/.pt), by "
                   "layer name (fine-tuning); weights that do not fit the net stop the run, "
                   "as in Caffe: --allow-missing lets new layers keep their fillers")
    p.add_argument("--resume", type=Path, metavar="STATE",
                   help="a <prefix>_iter_N.state.pt to continue from exactly")
    p.add_argument("--data", type=Path, required=True, help="training data (see below)")
    p.add_argument("--val", type=Path, help="validation data (default: DATA/val or the "
                   "CelebA val partition)")
    p.add_argument("--out", type=Path, help="output folder (default: the snapshot_prefix's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the net")
    p.add_argument("--max-iter", type=int, help="override the solver's max_iter")
    p.add_argument("--snapshot", type=int, help="override the solver's snapshot interval")
    p.add_argument("--test-interval", type=int, help="override the solver's test_interval")
    p.add_argument("--batch-size", type=int, help="override the train net's Input batch size")
    p.add_argument("--workers", type=int, default=4, help="data loader processes (default 4)")
    p.add_argument("--freeze", metavar="A,B,...|upto:NAME",
                   help="do not train these layers (lr_mult 0), e.g. the layers copied from a "
                        "pre-trained net: upto:fire9/concat")
    p.add_argument("--pipeline", choices=("auto", "cpu", "device"), default="auto",
                   help="where training crops are made: cpu (loader processes), device "
                        "(decoded once, warped and augmented on the GPU) or auto (device on "
                        "CUDA with fewer than 8 --workers; default)")
    p.add_argument("--sigma", type=float, default=1.0,
                   help="heatmap Gaussian sigma in heatmap pixels (default 1.0)")
    p.add_argument("--crop-scale", type=float,
                   help="crop side / landmarks' box (default 1.25; 2.2 for 5 points)")
    p.add_argument("--refine", choices=("taylor", "quarter", "none"), default="taylor",
                   help="heatmap decoding for val NME and the bundle (default taylor = DARK)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999); "
                        "validation, .caffemodel snapshots and the bundle use it, the state "
                        "file keeps both (not a Caffe solver field)")
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument("--rotate", type=float, default=30.0, help="max rotation, degrees (30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_fit_arguments(p)
    add_memory_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; exit 3 when the loss diverges (the message names the iteration and the top)."""
    import sys

    from landmarknet.data.transforms import Augment
    from landmarknet.params import fit_policy
    from landmarknet.train import TrainConfig, TrainingDiverged, train

    aug = Augment.none() if args.no_augment else Augment(rotate=args.rotate)
    cfg = TrainConfig(solver=args.solver, data=args.data, val=args.val, weights=args.weights,
                      resume=args.resume, out=args.out, device=args.device, amp=args.amp,
                      channels_last=args.channels_last, compile=args.compile,
                      max_iter=args.max_iter, snapshot=args.snapshot,
                      test_interval=args.test_interval, batch_size=args.batch_size,
                      workers=args.workers, pipeline=args.pipeline, sigma=args.sigma,
                      crop_scale=args.crop_scale, freeze=args.freeze,
                      refine=args.refine, augment=aug, progress=not args.no_progress,
                      ema=args.ema)
    try:
        # The trainer loads --weights and builds its nets itself: the policies reach it here.
        with fit_policy(fit_from_args(args)), memory_budget(args):
            summary = train(cfg)
    except TrainingDiverged as exc:
        print(f"landmarknet train: {exc}", file=sys.stderr)
        return 3
    print(json_text({k: v for k, v in summary.items() if k != "val"}, default=str, indent=1))
    if summary.get("val"):
        v = summary["val"]
        print(f"val: NME_io {v['nme_io']:.4f}  NME_ip {v['nme_ip']:.4f}  AUC@0.08 "
              f"{v['auc08']:.3f}  FR@0.10 {v['fr10']:.3f}  (n={v['n']})")
    return 0
