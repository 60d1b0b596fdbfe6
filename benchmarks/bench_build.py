#!/usr/bin/env python3
"""Parse + build time of big prototxts: ResNet-152, the OpenPose body (COCO) net, and chains of
ReLU layers (in place, as Caffe nets write them) to show that time grows linearly with layers.

The prototxts are written here from their published structure (ResNet-152: 3-8-36-3 bottleneck
blocks with BatchNorm + Scale; OpenPose COCO: VGG-19's first ten convolutions then six stages of
two branches, 7x7 kernels from stage 2 on). Prints a table of medians over repeats (the chains
are timed once: the 100,000-layer one takes tens of seconds) with microseconds per layer.

    python benchmarks/bench_build.py [--repeats 5] [--chains 10000,100000]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

from landmarknet.build import _gc_paused, build_net, count_params
from landmarknet.caffe.prototxt import read_net


def _conv(name, bottom, top, n, k, s=1, p=0, bias=True):
    bias_text = "" if bias else " bias_term: false"
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" '
            f'convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p}'
            f'{bias_text} }} }}\n')


def _bn_scale_relu(name, blob, relu=True):
    text = (f'layer {{ name: "bn{name}" type: "BatchNorm" bottom: "{blob}" top: "{blob}" '
            f'batch_norm_param {{ use_global_stats: true }} }}\n'
            f'layer {{ name: "scale{name}" type: "Scale" bottom: "{blob}" top: "{blob}" '
            f'scale_param {{ bias_term: true }} }}\n')
    if relu:
        text += f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'
    return text


def resnet152() -> str:
    """ResNet-152 deploy prototxt in MSRA's layer naming."""
    t = 'name: "ResNet-152"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 224\ninput_dim: 224\n'
    t += _conv("conv1", "data", "conv1", 64, 7, 2, 3, bias=False) + _bn_scale_relu("_conv1", "conv1")
    t += ('layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
          'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n')
    bottom, width = "pool1", 64
    for stage, blocks in zip((2, 3, 4, 5), (3, 8, 36, 3)):
        for b in range(blocks):
            tag = f"{stage}{chr(ord('a') + b)}" if blocks <= 3 else (f"{stage}a" if b == 0 else f"{stage}b{b}")
            stride = 2 if b == 0 and stage > 2 else 1
            out = f"res{tag}"
            if b == 0:
                t += _conv(f"res{tag}_branch1", bottom, f"res{tag}_branch1", width * 4, 1, stride,
                           bias=False) + _bn_scale_relu(f"{tag}_branch1", f"res{tag}_branch1", False)
                shortcut = f"res{tag}_branch1"
            else:
                shortcut = bottom
            t += _conv(f"res{tag}_branch2a", bottom, f"res{tag}_branch2a", width, 1, stride, bias=False)
            t += _bn_scale_relu(f"{tag}_branch2a", f"res{tag}_branch2a")
            t += _conv(f"res{tag}_branch2b", f"res{tag}_branch2a", f"res{tag}_branch2b", width, 3, 1, 1,
                       bias=False) + _bn_scale_relu(f"{tag}_branch2b", f"res{tag}_branch2b")
            t += _conv(f"res{tag}_branch2c", f"res{tag}_branch2b", f"res{tag}_branch2c", width * 4, 1,
                       bias=False) + _bn_scale_relu(f"{tag}_branch2c", f"res{tag}_branch2c", False)
            t += (f'layer {{ name: "{out}" type: "Eltwise" bottom: "{shortcut}" '
                  f'bottom: "res{tag}_branch2c" top: "{out}" }}\n'
                  f'layer {{ name: "{out}_relu" type: "ReLU" bottom: "{out}" top: "{out}" }}\n')
            bottom = out
        width *= 2
    t += ('layer { name: "pool5" type: "Pooling" bottom: "%s" top: "pool5" '
          'pooling_param { pool: AVE kernel_size: 7 stride: 1 } }\n' % bottom)
    t += ('layer { name: "fc1000" type: "InnerProduct" bottom: "pool5" top: "fc1000" '
          'inner_product_param { num_output: 1000 } }\n'
          'layer { name: "prob" type: "Softmax" bottom: "fc1000" top: "prob" }\n')
    return t


def openpose_body() -> str:
    """OpenPose COCO body net (pose_deploy_linevec.prototxt's structure), 368x368 input."""
    t = 'name: "OpenPose-COCO"\ninput: "image"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 368\ninput_dim: 368\n'

    def conv_relu(name, bottom, n, k, relu=True):
        text = _conv(name, bottom, name, n, k, 1, k // 2)
        if relu:
            text += f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
        return text

    bottom = "image"
    for block, (n, reps) in enumerate([(64, 2), (128, 2), (256, 4), (512, 2)], start=1):
        for r in range(1, reps + 1):
            name = f"conv{block}_{r}"
            t += conv_relu(name, bottom, n, 3)
            bottom = name
        if block < 4:
            t += (f'layer {{ name: "pool{block}" type: "Pooling" bottom: "{bottom}" '
                  f'top: "pool{block}" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}\n')
            bottom = f"pool{block}"
    t += conv_relu("conv4_3_CPM", bottom, 256, 3) + conv_relu("conv4_4_CPM", "conv4_3_CPM", 128, 3)
    features = "conv4_4_CPM"
    previous = None
    for stage in range(1, 7):
        outs = []
        for branch, maps in ((1, 38), (2, 19)):
            src = features if previous is None else previous
            k, n_mid, n_layers = (3, 128, 3) if stage == 1 else (7, 128, 5)
            for i in range(1, n_layers + 1):
                name = f"Mconv{i}_stage{stage}_L{branch}" if stage > 1 else f"conv5_{i}_CPM_L{branch}"
                t += conv_relu(name, src, n_mid, k)
                src = name
            name = f"Mconv{n_layers + 1}_stage{stage}_L{branch}" if stage > 1 else f"conv5_4_CPM_L{branch}"
            t += conv_relu(name, src, 512 if stage == 1 else 128, 1)
            src = name
            name = f"Mconv{n_layers + 2}_stage{stage}_L{branch}" if stage > 1 else f"conv5_5_CPM_L{branch}"
            t += conv_relu(name, src, maps, 1, relu=False)
            outs.append(name)
        if stage < 6:
            previous = f"concat_stage{stage + 1}"
            t += (f'layer {{ name: "{previous}" type: "Concat" bottom: "{outs[0]}" '
                  f'bottom: "{outs[1]}" bottom: "{features}" top: "{previous}" }}\n')
    return t


def relu_chain(n: int) -> str:
    """n ReLU layers in place on one small blob: the cost is the framework's, not the maths'."""
    head = 'name: "chain"\ninput: "data"\ninput_shape { dim: 1 dim: 8 }\n'
    return head + "".join(f'layer {{ name: "relu{i}" type: "ReLU" bottom: "data" top: "data" }}\n'
                          for i in range(n))


def bench(path: Path, repeats: int) -> dict:
    """Median times of parse, parse+build (wall and CPU seconds), and the parameter count.

    The parse is timed inside the garbage-collector pause that build_net applies when it is
    given a path (as `landmarknet build` does)."""
    parse_times, build_times, cpu_times = [], [], []
    net, layers = None, 0
    for _ in range(repeats):
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        with _gc_paused():
            parsed = read_net(path)
        t1 = time.perf_counter()
        layers = len(parsed.net.layer)
        net = build_net(parsed)
        t2, c2 = time.perf_counter(), time.process_time()
        parse_times.append(t1 - t0)
        build_times.append(t2 - t0)
        cpu_times.append(c2 - c0)
        del parsed
    return {"layers": layers, "params": count_params(net),
            "parse": statistics.median(parse_times), "build": statistics.median(build_times),
            "cpu": statistics.median(cpu_times)}


def main() -> None:
    """Write both prototxts to a temp folder, time them, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chains", default="10000,100000", metavar="N,N,...",
                    help="lengths of the ReLU chains to time ('' for none)")
    args = ap.parse_args()
    chains = [int(n) for n in args.chains.split(",") if n.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        nets = [("ResNet-152", resnet152(), args.repeats),
                ("OpenPose body (COCO)", openpose_body(), args.repeats)]
        nets += [(f"ReLU chain {n:,}", relu_chain(n), 1) for n in chains]
        for name, text, repeats in nets:
            path = Path(tmp) / f"{name.split()[0]}_{len(rows)}.prototxt"
            path.write_text(text)
            rows.append((name, bench(path, repeats)))
    print(f"{'net':<22} {'layers':>7} {'params':>12} {'parse s':>9} {'parse+build s':>14} "
          f"{'CPU s':>7} {'us/layer':>9}")
    for name, r in rows:
        print(f"{name:<22} {r['layers']:>7,} {r['params']:>12,} {r['parse']:>9.3f} "
              f"{r['build']:>14.3f} {r['cpu']:>7.2f} {1e6 * r['build'] / r['layers']:>9.0f}")
    print(f"(median of {args.repeats}, chains once; build = parse + graph + shapes on meta + "
          "real modules + Caffe fillers + fx code)")


if __name__ == "__main__":
    main()
