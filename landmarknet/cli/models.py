"""``landmarknet models``: the installed landmark model bundles, their metrics and licence.

Lists every bundle found by name (the shipped ones in landmarknet/models/, and those in the
folders of $LANDMARKNET_MODELS, searched first): the name that ``detect --model``, ``evaluate``,
``bench``, ``visualize`` and ``build`` accept, its points, its accuracy on its validation set
(from model.json's "metrics") and its terms of use (from the model card). The MTCNN detector is
listed below them. ``--verify`` also checks every file against landmarknet/models/MANIFEST.
"""
from __future__ import annotations

import argparse

EXAMPLE = """\
examples:
  landmarknet models
  landmarknet models --json
  landmarknet models --verify
"""

#: Metrics shown in the table (model.json keys), in this order.
TABLE_METRICS = ("nme_io", "auc08", "fr08")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("models", help="list the installed model bundles (metrics, licence)",
                       description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true",
                   help='print {"models_dir", "search_path", "bundles": [{"name", "folder", '
                        '"points", "decoding", "default", "metrics", "licence", "verified", '
                        '"problem"}], "detector": {...}}')
    p.add_argument("--verify", action="store_true",
                   help="check every file against its sha256 in MANIFEST (exit 1 on a mismatch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the bundles; 1 when --verify found a problem."""
    from landmarknet.jsontext import json_text
    from landmarknet.models import (MODELS_DIR, bundle_info, detector_info, installed_bundles,
                                    model_dirs)

    infos = [bundle_info(b, verify=args.verify) for b in installed_bundles()]
    detector = detector_info(verify=args.verify)
    bad = [i.problem for i in infos if i.problem] + ([detector["problem"]]
                                                     if detector["problem"] else [])
    if args.json:
        print(json_text({"models_dir": str(MODELS_DIR),
                         "search_path": [str(d) for d in model_dirs()],
                         "bundles": [i.to_json() for i in infos], "detector": detector},
                        indent=1, default=str))
    else:
        print(_table(infos, detector, args.verify))
    return 1 if bad else 0


def _metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _table(infos, detector: dict, verified: bool) -> str:
    """The human listing: one row per bundle, then licences, then the detector."""
    heads = ["name", "points", "decoding"] + [m.upper() for m in TABLE_METRICS] + ["val set"]
    rows = [[i.name + (" (default)" if i.default else ""), str(i.points or "-"), i.decoding]
            + [_metric(i.metrics.get(m)) for m in TABLE_METRICS]
            + [str(i.metrics.get("split", "-"))] for i in infos]
    if verified:
        heads.append("sha256")
        for row, i in zip(rows, infos):
            row.append({True: "ok", False: "MISMATCH" if i.problem else "not listed",
                        None: "-"}[i.verified])
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h)
              for k, h in enumerate(heads)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(heads, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if not infos:
        lines.append("(no bundle installed)")
    lines.append("")
    lines.append("NME_io: inter-ocular normalised mean error; AUC08 / FR08: area under the CED "
                 "curve / failure rate at 0.08 (model.json metrics, ground-truth boxes)")
    lines.append("licences (model cards):")
    lines += [f"  {i.name}: {i.licence}" for i in infos]
    lines.append(f"  detector mtcnn: {detector['licence']}")
    lines.append("folders:")
    lines += [f"  {i.name}: {i.folder}" for i in infos]
    lines.append(f"  detector mtcnn: {detector['folder']}"
                 + (f" (sha256 {'ok' if detector['verified'] else 'not listed'})"
                    if verified and not detector["problem"] else ""))
    problems = [i.problem for i in infos if i.problem] + (
        [detector["problem"]] if detector["problem"] else [])
    lines += [f"problem: {p}" for p in problems]
    return "\n".join(lines)
