"""Child side of real_caffe.run_caffe: runs one job module inside the reference Caffe.

Usage: ``python _caffe_worker.py REQUEST.json`` with pycaffe and this folder on PYTHONPATH.
Runs under the reference Caffe's own interpreter (Debian's python3 and numpy): nothing here may
import landmarknet or torch.
"""
from __future__ import annotations

import importlib
import json
import sys
import traceback

EXIT_FAILED = 4


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as fh:
        req = json.load(fh)
    import numpy as np

    import caffe
    caffe.set_mode_cpu()
    with np.load(req["inputs"], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    try:
        module = importlib.import_module(f"_caffe_job_{req['job']}")
        meta, out = module.run(caffe, req, arrays)
    except Exception:  # noqa: BLE001 - the parent quotes the traceback in CaffeFailed
        traceback.print_exc()
        return EXIT_FAILED
    with open(req["result"], "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    np.savez(req["outputs"], **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
