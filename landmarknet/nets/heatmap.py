"""OpenPose/CPM-style multi-stage heatmap networks for face landmarks.

A VGG-like trunk (conv1_1/1_2 64, pool, conv2_1/2_2 128, pool, conv3_1..3_3 256, then two
"CPM" convolutions down to 64 features) at stride 4, then stages. Stage 1 predicts K+1 maps
(one per landmark plus a background map, as OpenPose does); every later stage reads the trunk
features concatenated with the previous stage's maps. Every stage has its own loss against the
target maps (intermediate supervision): EuclideanLoss, or the Adaptive Wing loss in the awing
variant.

Why stride 4 by *two* pools instead of VGG's three pools plus a Deconvolution: the maps must be
28x28 at 112 input (at 14x14, argmax decoding alone costs about 7% NME). Keeping conv3_x and
the stages at 28x28 gives every stage full-resolution features, needs no learned upsampling
(which starts as noise and can leave checkerboard artefacts in the maps) and keeps the net a
plain chain of the layers any Caffe has. The price is compute: the stages run on 4x as many
positions as at stride 8 (MACs are listed in docs/networks.md). The hourglass variant is the
down-and-up alternative.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from landmarknet.data.schemes import get_scheme
from landmarknet.netspec import NetSpec, gaussian, msra, relu_name_for

#: VGG trunk up to conv3_3, as the issue fixes it: (name, channels) per block, pool between.
VGG_BLOCKS = ((("conv1_1", 64), ("conv1_2", 64)),
              (("conv2_1", 128), ("conv2_2", 128)),
              (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)))

#: The light trunk ("mobile"): conv1 (3x3, stride 2) then depthwise-separable units (depthwise
#: 3x3 + pointwise 1x1, MobileNet v1's unit) as (name, channels, stride); stride 4 in all, like
#: the VGG trunk, so the maps stay 28x28 at 112 input.
MOBILE_BLOCKS = (("block1", 48, 1), ("block2", 64, 2), ("block3", 64, 1), ("block4", 96, 1),
                 ("block5", 96, 1))

#: Dilations replacing the five 7x7 convolutions of a stage in the 'dilated' variant: the same
#: 3x3 weights see a 27x27 window (five 7x7 see 31x31); 1 at both ends fills the gaps that
#: dilated convolutions alone leave ("gridding").
DILATIONS = (1, 3, 5, 3, 1)


@dataclass(frozen=True)
class HeatmapConfig:
    """Everything that varies between the heatmap networks."""

    name: str
    points: int = 68
    stages: int = 4
    input_size: int = 112
    trunk: str = "vgg"  # "vgg", "hourglass" or "mobile" (depthwise-separable, light)
    #: Stage convolutions: "7x7" (plain), "dilated" (3x3, DILATIONS) or "separable" (depthwise
    #: stage_kernel x stage_kernel + pointwise 1x1: ~k*k/C of a plain convolution's MACs).
    stage_kernels: str = "7x7"
    stage_kernel: int = 7  # kernel of the "separable" stage convolutions (stages 2..)
    #: Convolutions per refinement stage (stages 2..) for "7x7" and "separable"; "dilated"
    #: stages have one per entry of DILATIONS.
    stage_convs: int = 5
    #: Channel multiplier of the mobile trunk's units (MOBILE_BLOCKS), rounded to multiples of 8.
    width: float = 1.0
    residual: bool = False  # residual units inside the stages
    head: str = "base"  # "base" (1x1 128, 1x1 K+1) or "strong"
    features: int = 64  # trunk channels fed to every stage
    stage_channels: int = 32  # width of the stage convolutions
    head_channels: int = 128  # width of the 1x1 layer before the maps
    loss_weight: float = 1.0  # of every stage's loss
    #: Every stage's loss: "euclidean" (Caffe's EuclideanLoss, as OpenPose) or "awing" (the
    #: Adaptive Wing loss with its weighted loss map, Wang et al. 2019: Python:AdaptiveWingLoss).
    loss: str = "euclidean"
    #: BatchNorm + Scale after every hidden convolution (not the map layers); the convolutions
    #: before them lose their bias (BatchNorm removes it, Scale adds one back).
    batch_norm: bool = False
    #: Weight filler of the hidden convolutions: "msra" (He) or "gaussian" (std 0.01, as
    #: OpenPose writes it, where the trunk starts from ImageNet VGG weights). From scratch,
    #: std 0.01 through ~20 convolutions shrinks the activations to ~1e-12 and the gradients
    #: below Adam's epsilon; measured on ytf68 (1000 Adam steps): val NME 0.106 with gaussian
    #: 0.01, 0.071 with msra. The map layers are gaussian 0.01 either way.
    init: str = "msra"
    train_batch: int = 32
    test_batch: int = 16
    #: Adam's rate in the generated solver: the BatchNorm nets train at 1e-3 (docs/results.md).
    base_lr: float = 1e-4
    #: Iterations of the generated solver; the rate drops x0.1 at 60 % and 80 % of them.
    max_iter: int = 20000

    @property
    def maps(self) -> int:
        """Output channels: one map per landmark plus the background map."""
        return self.points + 1

    @property
    def map_size(self) -> int:
        """Side of the heatmaps (stride 4)."""
        return self.input_size // 4

    def __post_init__(self) -> None:
        get_scheme(self.points)  # only known landmark schemes
        if self.input_size % 16:
            raise ValueError("input_size must be a multiple of 16 (stride 4, hourglass x4)")
        if self.trunk not in ("vgg", "hourglass", "mobile") \
                or self.head not in ("base", "strong") \
                or self.stage_kernels not in ("7x7", "dilated", "separable") \
                or self.init not in ("gaussian", "msra") \
                or self.loss not in ("euclidean", "awing") or self.stage_convs < 1:
            raise ValueError(f"bad heatmap config {self}")


def _conv(ns: NetSpec, cfg: HeatmapConfig, name: str, x: str, n: int, kernel: int = 3,
          dilation: int = 1, relu_name: str | None = None, relu: bool = True,
          stride: int = 1) -> str:
    """A hidden convolution: conv [+ BatchNorm + Scale when cfg.batch_norm] [+ ReLU]."""
    x = ns.conv(name, x, n, kernel, dilation=dilation, stride=stride, bias=not cfg.batch_norm)
    if cfg.batch_norm:
        x = ns.bn_scale(f"{name}/bn", f"{name}/scale", x)
    return ns.relu(relu_name or relu_name_for(name), x) if relu else x


def _separable(ns: NetSpec, cfg: HeatmapConfig, name: str, x: str, channels_in: int, n: int,
               kernel: int = 3, stride: int = 1, relu_name: str | None = None) -> str:
    """A depthwise-separable unit: ``{name}_dw`` (depthwise kernel x kernel, one filter per input
    channel) then ``{name}`` (pointwise 1x1 to n), each with its BatchNorm/Scale and ReLU."""
    x = ns.conv(f"{name}_dw", x, channels_in, kernel, stride=stride, group=channels_in,
                bias=not cfg.batch_norm)
    if cfg.batch_norm:
        x = ns.bn_scale(f"{name}_dw/bn", f"{name}_dw/scale", x)
    x = ns.relu(f"{name}_dw/relu", x)
    return _conv(ns, cfg, name, x, n, 1, relu_name=relu_name)


def _width(cfg: HeatmapConfig, channels: int) -> int:
    """Channels of a mobile unit scaled by cfg.width, a multiple of 8 (SIMD-friendly)."""
    return max(8, int(round(channels * cfg.width / 8)) * 8)


def _trunk_mobile(ns: NetSpec, data: str, cfg: HeatmapConfig) -> str:
    """conv1 (3x3, stride 2) then depthwise-separable units down to stride 4 and a pointwise
    projection to cfg.features: ~1/40 of the VGG trunk's MACs."""
    c = _width(cfg, 24)
    x = _conv(ns, cfg, "conv1", data, c, stride=2)
    for name, n, stride in MOBILE_BLOCKS:
        n = _width(cfg, n)
        x = _separable(ns, cfg, name, x, c, n, 3, stride)
        c = n
    ns.comment(f"features: pointwise {c} -> {cfg.features}, at stride 4")
    return _conv(ns, cfg, "conv_features", x, cfg.features, 1)


def _trunk_vgg(ns: NetSpec, data: str, cfg: HeatmapConfig) -> str:
    x = data
    for b, block in enumerate(VGG_BLOCKS):
        for name, ch in block:
            x = _conv(ns, cfg, name, x, ch)
        if b < 2:  # two pools: stride 4
            x = ns.pool(f"pool{b + 1}", x)
    ns.comment("CPM features: 256 -> 128 -> features, still at stride 4")
    x = _conv(ns, cfg, "conv4_1_CPM", x, 128)
    return _conv(ns, cfg, "conv4_2_CPM", x, cfg.features)


def _trunk_hourglass(ns: NetSpec, data: str, cfg: HeatmapConfig) -> str:
    """conv1/conv2 as VGG, then one hourglass: 28 -> 14 -> 7 and back up with fixed bilinear
    Deconvolutions, adding the skip branch of the same resolution (Eltwise SUM) on the way."""
    x = data
    for b, block in enumerate(VGG_BLOCKS[:2]):
        for name, ch in block:
            x = _conv(ns, cfg, name, x, ch)
        x = ns.pool(f"pool{b + 1}", x)
    ns.comment("hourglass down: 1/4 -> 1/8 -> 1/16")
    x = _conv(ns, cfg, "conv3_1", x, 256)
    skip4 = _conv(ns, cfg, "conv3_2", x, 128)
    x = ns.pool("pool3", skip4)
    x = _conv(ns, cfg, "conv4_1", x, 256)
    skip8 = _conv(ns, cfg, "conv4_2", x, 128)
    x = ns.pool("pool4", skip8)
    x = _conv(ns, cfg, "conv5_1", x, 128)
    x = _conv(ns, cfg, "conv5_2", x, 128)
    ns.comment("hourglass up: bilinear x2 (fixed, lr_mult 0) + skip, twice")
    x = ns.upsample_bilinear("up5", x, 128)
    x = ns.eltwise_sum("up5_sum", [x, skip8])
    x = _conv(ns, cfg, "conv6_1", x, 128)
    x = ns.upsample_bilinear("up6", x, 128)
    x = ns.eltwise_sum("up6_sum", [x, skip4])
    return _conv(ns, cfg, "conv7_1_CPM", x, cfg.features)


def _head(ns: NetSpec, p: str, x: str, cfg: HeatmapConfig, first: int) -> str:
    """The prediction head of a stage: 1x1 layers down to the K+1 maps (no ReLU on maps)."""
    if cfg.head == "strong":
        # Spatial context first: a 3x3 layer (the base head is pointwise), then the 1x1 layer.
        x = _conv(ns, cfg, f"{p}_conv{first}", x, cfg.head_channels // 2, 3,
                  relu_name=f"{p}_relu{first}")
        first += 1
    x = _conv(ns, cfg, f"{p}_conv{first}", x, cfg.head_channels, 1, relu_name=f"{p}_relu{first}")
    # Small weights on the maps whatever the hidden filler: predictions start near zero.
    return ns.conv(f"{p}_maps", x, cfg.maps, 1, weight_filler=gaussian(0.01))


def _residual_body(ns: NetSpec, cfg: HeatmapConfig, p: str, x: str, n: int,
                   ks: list[tuple[int, int]]) -> str:
    """conv1 (projection) then residual units of two convolutions each: y = relu(x + F(x))."""
    k, d = ks[0]
    x = _conv(ns, cfg, f"{p}_conv1", x, n, k, d, relu_name=f"{p}_relu1")
    i = 2
    while i + 1 <= len(ks):
        k1, d1 = ks[i - 1]
        k2, d2 = ks[i]
        y = _conv(ns, cfg, f"{p}_conv{i}", x, n, k1, d1, relu_name=f"{p}_relu{i}")
        y = _conv(ns, cfg, f"{p}_conv{i + 1}", y, n, k2, d2, relu=False)
        x = ns.eltwise_sum(f"{p}_res{i // 2}", [x, y])
        x = ns.relu(f"{p}_relu{i + 1}", x)
        i += 2
    return x


def _separable_stage(ns: NetSpec, t: int, features: str, prev: str | None,
                     cfg: HeatmapConfig) -> str:
    """A light stage: depthwise-separable units (stage 1: two 3x3 on the trunk features; later
    stages: cfg.stage_convs units of cfg.stage_kernel on features + previous maps), then the
    head. Depthwise 7x7 keeps the stages' wide field of view at a fraction of the MACs."""
    p = f"stage{t}"
    if t == 1:
        x, c, n, k, units = features, cfg.features, cfg.features, 3, 2
    else:
        x = ns.concat(f"{p}_concat", [features, prev])
        c, n, k, units = cfg.features + cfg.maps, cfg.stage_channels, cfg.stage_kernel, \
            cfg.stage_convs
    for i in range(1, units + 1):
        x = _separable(ns, cfg, f"{p}_conv{i}", x, c, n, k, relu_name=f"{p}_relu{i}")
        c = n
    return _head(ns, p, x, cfg, units + 1)


def _stage(ns: NetSpec, t: int, features: str, prev: str | None, cfg: HeatmapConfig) -> str:
    if cfg.stage_kernels == "separable":
        return _separable_stage(ns, t, features, prev, cfg)
    p = f"stage{t}"
    if t == 1:
        x, n, ks = features, cfg.features, [(3, 1)] * 3
    else:
        x = ns.concat(f"{p}_concat", [features, prev])
        n = cfg.stage_channels
        ks = [(7, 1)] * cfg.stage_convs if cfg.stage_kernels == "7x7" \
            else [(3, d) for d in DILATIONS]
    if cfg.residual:
        x = _residual_body(ns, cfg, p, x, n, ks)
    else:
        for i, (k, d) in enumerate(ks, start=1):
            x = _conv(ns, cfg, f"{p}_conv{i}", x, n, k, d, relu_name=f"{p}_relu{i}")
    return _head(ns, p, x, cfg, len(ks) + 1)


def heatmap_net(cfg: HeatmapConfig, deploy: bool = False) -> NetSpec:
    """The train_val (inputs + losses in both phases) or deploy net of a heatmap config."""
    ns = NetSpec(cfg.name, conv_filler=gaussian(0.01) if cfg.init == "gaussian" else msra())
    s, h = cfg.input_size, cfg.map_size
    if deploy:
        data = ns.input("data", (1, 3, s, s))
    else:
        ns.comment("inputs: fed by the training pipeline by blob name (no database needed);\n"
                   f"heatmaps: {cfg.points} landmark maps + 1 background map at stride 4")
        for phase, n in (("train", cfg.train_batch), ("test", cfg.test_batch)):
            ns.layer("Input", f"input_{phase}", (), ["data", "heatmaps"], phase=phase,
                     input_param={"shape": [{"dim": [n, 3, s, s]},
                                            {"dim": [n, cfg.maps, h, h]}]})
        data = "data"
    ns.comment("trunk" + {"hourglass": " (hourglass)", "vgg": " (VGG, 2 pools: stride 4)",
                          "mobile": " (depthwise-separable: stride 4)"}[cfg.trunk])
    trunk = {"vgg": _trunk_vgg, "hourglass": _trunk_hourglass, "mobile": _trunk_mobile}[cfg.trunk]
    features = trunk(ns, data, cfg)
    prev = None
    for t in range(1, cfg.stages + 1):
        ns.comment(f"stage {t}" + (" (trunk features only)" if t == 1 else
                                   f" (trunk features + stage {t - 1} maps)"))
        prev = _stage(ns, t, features, prev, cfg)
        if not deploy and cfg.loss == "euclidean":
            ns.euclidean_loss(f"stage{t}_loss", prev, "heatmaps", cfg.loss_weight)
        elif not deploy:
            ns.python(f"stage{t}_loss", "AdaptiveWingLoss", [prev, "heatmaps"], f"stage{t}_loss",
                      loss_weight=cfg.loss_weight)
    return ns


def heatmap_solver(cfg: HeatmapConfig, net_path: str, val_size: int) -> dict:
    """Adam (scale-free: the summed Euclidean loss of K+1 maps is large), step decay."""
    return {
        "net": net_path,
        "test_iter": -(-val_size // cfg.test_batch),
        "test_interval": 1000,
        "test_initialization": False,
        "type": "Adam",
        "base_lr": cfg.base_lr,
        "momentum": 0.9,
        "momentum2": 0.999,
        "delta": 1e-8,
        "weight_decay": 5e-4,
        "lr_policy": "multistep",
        "gamma": 0.1,
        "stepvalue": [cfg.max_iter * 3 // 5, cfg.max_iter * 4 // 5],
        "max_iter": cfg.max_iter,
        "display": 50,
        "average_loss": 50,
        "snapshot": 2000,
        "snapshot_prefix": f"snapshots/{cfg.name}/{cfg.name}",
        "random_seed": 1,
    }


BASE = HeatmapConfig("heatmap4_68")

#: Every heatmap network: name -> (config, one-line summary of what it changes and why).
HEATMAP_NETS: dict[str, tuple[HeatmapConfig, str]] = {
    "heatmap4_68": (BASE, "the main net: VGG trunk at stride 4, 4 stages with 7x7 stage kernels"),
    "heatmap3_68": (replace(BASE, name="heatmap3_68", stages=3),
                    "3 stages: the 4th stage gains little accuracy and costs a quarter of the "
                    "stage compute"),
    "heatmap4_68_dilated": (replace(BASE, name="heatmap4_68_dilated", stage_kernels="dilated"),
                            "the five 7x7 convolutions of stages 2-4 become 3x3 convolutions "
                            f"with dilations {DILATIONS}: nearly the same field of view "
                            "(27 vs 31 map pixels) at 9/49 of the weights and MACs"),
    "heatmap4_68_residual": (replace(BASE, name="heatmap4_68_residual", residual=True),
                             "residual units inside every stage (conv1, then two units of two "
                             "convolutions with an Eltwise SUM skip): same weights, easier "
                             "gradient flow through the deep stages"),
    "heatmap4_68_head": (replace(BASE, name="heatmap4_68_head", head="strong"),
                         "a stronger prediction head in every stage: a 3x3 convolution (64) "
                         "before the 1x1 layer (128) and the maps, so the head sees a 3x3 "
                         "neighbourhood of the stage features (the base head is pointwise)"),
    "heatmap4_68_160": (replace(BASE, name="heatmap4_68_160", input_size=160),
                        "160x160 input (40x40 maps): the same weights, finer maps for large "
                        "faces, 2x the compute"),
    "heatmap4_68_hourglass": (replace(BASE, name="heatmap4_68_hourglass", trunk="hourglass"),
                              "an hourglass trunk: after conv2 it goes down to 1/16 (7x7) and "
                              "back up to 1/4 with fixed bilinear Deconvolutions and Eltwise SUM "
                              "skips: a larger field of view for the trunk features at less "
                              "compute than conv3_x at 1/4"),
    "heatmap4_68_awing": (replace(BASE, name="heatmap4_68_awing", loss="awing"),
                          "the Adaptive Wing loss (Wang et al. 2019) at every stage instead of "
                          "the Euclidean loss: steep for small errors near the peaks, close to "
                          "squared on the background, and 11x weight on the dilated foreground "
                          "pixels, which the Euclidean loss lets the background outvote"),
    "heatmap4_68_bn": (replace(BASE, name="heatmap4_68_bn", batch_norm=True),
                       "BatchNorm + Scale after every hidden convolution (trunk and stages; "
                       "the maps stay plain): the net trains from scratch, and ~25 "
                       "convolutions deep, without ImageNet weights; BatchNorm keeps every "
                       "layer's input scaled whatever the initialisation"),
    "heatmap4_5": (replace(BASE, name="heatmap4_5", points=5),
                   "5 points (CUHK/CelebA layout): the main net with 6 maps"),
}

#: The light family: the same multi-stage heatmap idea (trunk at stride 4, stages refining the
#: maps, a loss per stage, 112 input) built for a CPU at batch 1: a depthwise-separable trunk
#: and depthwise 7x7 stage convolutions, BatchNorm throughout; ~1/20-1/40 of heatmap4_68's MACs.
LIGHT = HeatmapConfig("light3_68", trunk="mobile", stage_kernels="separable", batch_norm=True,
                      stages=3, stage_kernel=7, stage_convs=3, stage_channels=48,
                      head_channels=64, base_lr=1e-3, max_iter=5200)
LIGHT_WIDE = replace(LIGHT, width=1.5, features=96, stage_channels=64, head_channels=96)

LIGHT_NETS: dict[str, tuple[HeatmapConfig, str]] = {
    "light3_68": (LIGHT, "the light family's base: a depthwise-separable trunk (conv1 stride 2, "
                         "five units) at stride 4, 3 stages of depthwise 7x7 + pointwise units, "
                         "BatchNorm throughout: ~0.095 GMACs"),
    "light4_68": (replace(LIGHT, name="light4_68", stages=4), "light3_68 with a 4th stage"),
    "light3w_68": (replace(LIGHT_WIDE, name="light3w_68", base_lr=3e-3, max_iter=23500),
                   "light3_68 1.5x wider (trunk units, 96 features, 64-wide stages, 96-wide "
                   "heads): ~0.17 GMACs"),
    "light4w_68": (replace(LIGHT_WIDE, name="light4w_68", stages=4, max_iter=4700),
                   "light3w_68 with a 4th stage: ~0.21 GMACs"),
    "light3w_5": (replace(LIGHT_WIDE, name="light3w_5", points=5, max_iter=10800),
                  "light3w_68 for 5 points (CUHK/CelebA layout)"),
    "light3w_77": (replace(LIGHT_WIDE, name="light3w_77", points=77, max_iter=8400),
                   "light3w_68 for 77 points (68 + 9 forehead points)"),
}
HEATMAP_NETS.update(LIGHT_NETS)
