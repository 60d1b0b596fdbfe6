#!/usr/bin/env bash
# The GPU figures of docs/performance.md ("On a GPU") in one device call.
#
# The device machine has no ../shared and no protobuf that reads our schema, so both travel
# with the call (git-ignored folders, never committed). Prepare them here first:
#
#   python tools/dev/pack_for_device.py ytf68 --quality 60
#   mkdir -p .devcarry/val68 && tar -czf .devcarry/val68/val.tgz -C .devcarry ytf68/val
#   pip download protobuf==<the version setup.cfg admits> --no-deps -d .whl   # once
#
# then, with the device tool: run(command="bash tools/dev/device_gpu_detect.sh",
# carry=[".devcarry/val68", ".whl"]). Everything it prints and writes lands in $OUT.
#
# Locally (no GPU) the same script checks itself: DEVICE=cpu IMAGES=20 OUT=/tmp/x bash ...
set -euo pipefail

DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-1000}
OUT=${OUT:-/tmp/device_gpu_detect}
mkdir -p "$OUT"

if [[ -z "${LANDMARKNET_SHARED:-}" ]]; then
    mkdir -p /tmp/shared/data
    tar -xzf .devcarry/val68/val.tgz -C /tmp/shared/data
    export LANDMARKNET_SHARED=/tmp/shared
fi
if ls .whl/*.whl >/dev/null 2>&1 && ! PYTHONPATH=$PWD python3 -c "import landmarknet.caffe.caffe_pb2" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u
    python3 -c "import torch, cv2; print('torch', torch.__version__, 'opencv', cv2.__version__)"
    if [[ "$DEVICE" == cuda* ]]; then nvidia-smi --query-gpu=name,memory.total --format=csv; fi
    lscpu | grep -E "Model name|^CPU\(s\)" || true
} 2>&1 | tee "$OUT/machine.txt"

# End to end, the default bundle, then the light one: batched folder and one image at a time.
for model in heatmap4_68_bn light3w_68; do
    python3 benchmarks/bench_detect.py --device "$DEVICE" --images "$IMAGES" \
        --workloads batch,images --batch 64 --no-draw --model "$model" \
        --json "$OUT/detect_${model}.json" 2>&1 | tee "$OUT/detect_${model}.txt"
done

# The landmark nets alone on the GPU (docs/results.md's light table has "-" for these).
LANDMARKNET="python3 -c 'import sys; from landmarknet.cli.main import main; sys.exit(main())'"
if [[ "$DEVICE" == cuda* ]]; then
    for model in light3w_68 light3w_77 light3w_5; do
        eval "$LANDMARKNET" bench "$model" --device cuda --batch 1,256 --backends fast \
            2>&1 | tee "$OUT/gpu_${model}.txt"
    done
fi

# The CPU table on this host's (Intel) cores, two of them as on a laptop, with the OpenMP
# policy of landmarknet.runtime (the earlier Intel figures were taken with the passive one).
# OpenCV 5 has no Caffe importer, so OpenCV DNN is skipped here unless a 4.x is importable.
if [[ "${CPU_TABLE:-1}" == 1 ]]; then
    for model in light3w_68 light3w_77 light3w_5 squeeze77 heatmap4_68_bn; do
        eval taskset -c 0,1 "$LANDMARKNET" bench "$model" --batch 1 --threads 2 --backends fast,onnxruntime,opencv --repeats 30 \
            2>&1 | tee "$OUT/cpu_${model}.txt"
    done
fi
