#!/usr/bin/env python3
"""Install a trained model into landmarknet/models/NAME: deploy + caffemodel + model.json with metrics.

The trainer writes a bundle on the device; its model.json names the device's paths. This
copies the weights and the deploy net, sets the output options and the provenance given here,
evaluates the bundle on the original val data (../shared, not the re-encoded device copy) and
stores those metrics in model.json, then rewrites landmarknet/models/MANIFEST (sha256 of every
shipped file). The model card (README.md) is written by hand; run
`python -c "from landmarknet.models import write_manifest; write_manifest()"` after editing it.

    python tools/dev/install_bundle.py heatmap4_68 --caffemodel /work/.device/2/h4_final.caffemodel \\
        --model-json /tmp/swB/runs/h4_final/heatmap4_68_bundle/model.json \\
        --val ../shared/data/ytf68/val --flip-test --provenance prov.json
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from landmarknet.models import MODELS_DIR, write_manifest
from landmarknet.paths import shared_dir

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--caffemodel", type=Path, required=True)
    ap.add_argument("--model-json", type=Path, required=True, help="the trainer's model.json")
    ap.add_argument("--val", type=Path, required=True, help="original val data to measure on")
    ap.add_argument("--flip-test", action="store_true")
    ap.add_argument("--provenance", type=Path, help="JSON merged into model.json's provenance")
    ap.add_argument("--default", action="store_true", help="mark as the default model")
    args = ap.parse_args()
    from landmarknet.cli.evaluate import evaluate_bundle
    from landmarknet.data.dataset import is_celeba, read_samples
    from landmarknet.data.schemes import get_scheme
    from landmarknet.infer import LandmarkModel
    from landmarknet.metrics import evaluate_points

    dst = MODELS_DIR / args.name
    dst.mkdir(parents=True, exist_ok=True)
    spec = json.loads(args.model_json.read_text())
    shutil.copyfile(ROOT / "prototxt" / args.name / "deploy.prototxt", dst / "deploy.prototxt")
    shutil.copyfile(args.caffemodel, dst / f"{args.name}.caffemodel")
    (dst / f"{args.name}.caffemodel").chmod(0o644)
    spec.update(name=args.name, prototxt="deploy.prototxt", weights=f"{args.name}.caffemodel")
    spec["output"]["flip_test"] = bool(args.flip_test)
    prov = dict(spec.get("provenance", {}))
    if args.provenance:
        prov.update(json.loads(args.provenance.read_text()))
    spec["provenance"] = prov
    if args.default:
        spec["default"] = True
    spec.pop("metrics", None)
    (dst / "model.json").write_text(json.dumps(spec, indent=1) + "\n")
    model = LandmarkModel.load(dst, verify=False)  # MANIFEST is rewritten at the end
    part = "val" if is_celeba(args.val) else None
    samples, _ = read_samples(args.val, part, model.scheme.n_points)
    pred, gt, bad = evaluate_bundle(model, samples)
    import numpy as np

    from landmarknet.data.transforms import points_box
    boxes = np.array([points_box(g) for g in gt])
    m = evaluate_points(pred, gt, get_scheme(model.scheme.n_points), boxes)
    try:
        split = str(args.val.resolve().relative_to(shared_dir().resolve()))
    except ValueError:
        split = str(args.val)
    metrics = {k: (float(v) if isinstance(v, float) else v) for k, v in m.items()}
    metrics.update(split=split + (" (partition 1)" if part else ""), skipped=len(bad),
                   flip_test=bool(args.flip_test))
    spec["metrics"] = metrics
    (dst / "model.json").write_text(json.dumps(spec, indent=1, default=float) + "\n")
    print(f"rewrote {write_manifest()}")
    print(json.dumps({k: metrics[k] for k in ("n", "nme_io", "nme_ip", "auc08", "fr08", "fr10")}))


if __name__ == "__main__":
    main()
