"""The SqueezeNet landmark regressors (68 and 77 points) with region attention and fusion.

Backbone: SqueezeNet v1.0 (7x7/2 first convolution that shrinks the map fast, followed by
BatchNorm + Scale, fire modules fire2..fire9 with the release's widths and layer names, max
pools after conv1, fire4 and fire8). Heads, all on the fire9 features:

* global head: global average pooling, then a 1x1 convolution to 2K values and Flatten (no
  fully connected layer; since nothing non-linear sits between them, pooling first and the 1x1
  convolution after is the same function as SqueezeNet's conv10-then-pool, at 1/36 the MACs);
* local heads: a 1x1 convolution gives one logit map per region, ``Python:RegionPool`` turns
  each into a spatial softmax and pools that region's features, and one InnerProduct per region
  predicts that region's points;
* fusion: ``Python:RegionFusion`` mixes global and local points per point with a sigmoid gate
  whose logits come from the pooled features (an InnerProduct), so the mix can differ per face;
* region attention (train/val only): SE-style InnerProduct reduce -> ReLU -> InnerProduct expand
  -> Sigmoid over the pooled features gives one weight per region for
  ``Python:RegionWeightedEuclideanLoss``, which normalises them to mean one (with a floor).

The align variant puts a small multi-task branch in front: it regresses the face box and the
in-plane angle from the raw crop, ``Python:AffineAlign`` warps the face upright, the landmark net
above runs on the aligned face, and ``Python:InverseAffinePoints`` maps its points back so that
every loss is computed in the original crop's coordinates.

Targets (``points``) are unit coordinates ``(x + 0.5) / W``, interleaved u0, v0, u1, v1, ...

Loss: the thesis' squared error, or with ``penalty="wing"`` the Wing loss on every point loss
(the ``*_wing`` nets). In unit coordinates the squared error's gradient fades with the error and
weight decay outweighs it; the Wing loss took squeeze77 from 0.054 to 0.046 NME on ytf77/val
(docs/results.md), so the shipped squeeze77 is trained with it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from landmarknet.data.schemes import get_scheme
from landmarknet.netspec import NetSpec, constant, gaussian, index_ranges, msra, xavier

#: SqueezeNet v1.0 fire modules: (name, squeeze, expand), max pool after fire4 and fire8.
FIRES = (("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), ("fire5", 32, 128),
         ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256))
POOL_AFTER = {"fire4": "pool4", "fire8": "pool8"}

#: The last backbone layer: ``--copy-layers upto:fire9/concat`` copies the whole backbone.
BACKBONE_LAST = "fire9/concat"


@dataclass(frozen=True)
class SqueezeConfig:
    """What varies between the SqueezeNet regressors."""

    name: str
    points: int = 77
    input_size: int = 112  # the landmark net's input (the aligned crop in the align variant)
    align: bool = False
    align_input: int = 128  # the raw crop the align branch sees
    attention_reduce: int = 32  # SE bottleneck width
    #: Ablations of the thesis: region attention weighting the loss (off: plain Euclidean loss
    #: on the fused points) and region fusion (off: the global head alone predicts).
    attention: bool = True
    fusion: bool = True
    min_weight: float = 0.25  # floor of the normalised region weights
    aux_loss_weight: float = 0.5  # of the global-head and local-head losses
    #: Of the box and angle losses: the landmark loss also pulls on box and angle (through the
    #: warp, summed over all K points), so their own supervision is weighted up.
    align_loss_weight: float = 10.0
    #: Penalty of the point losses: "l2" (Caffe's EuclideanLoss, the thesis') or "wing" (the
    #: Wing loss inside Python:RegionWeightedEuclideanLoss, for every point loss).
    penalty: str = "l2"
    train_batch: int = 64
    test_batch: int = 32
    #: Weight filler of the backbone and align-branch convolutions: "msra" (He) or "xavier"
    #: (the SqueezeNet release's). Measured on ytf77 (1000 Adam steps, lr 1e-3): val NME
    #: 0.069 with msra, 0.185 with xavier (no better than the mean shape, 0.188).
    init: str = "msra"

    def __post_init__(self) -> None:
        scheme = get_scheme(self.points)
        order = [i for r in scheme.regions.values() for i in r]
        if self.penalty not in ("l2", "wing"):
            raise ValueError(f"penalty must be l2 or wing, got {self.penalty!r}")
        if self.init not in ("msra", "xavier"):
            raise ValueError(f"init must be msra or xavier, got {self.init!r}")
        if order != list(range(self.points)) or len(scheme.regions) < 2:
            # The local heads' concatenation is compared with the targets directly.
            raise ValueError(f"scheme {scheme.name}: needs 2+ regions listing the points in order")

    @property
    def regions(self) -> dict[str, list[int]]:
        """Region name -> point indices, from landmarknet.data.schemes."""
        return {k: list(v) for k, v in get_scheme(self.points).regions.items()}

    @property
    def regions_param(self) -> dict[str, str]:
        """The regions as param_str writes them: name -> "first-last" ranges."""
        return {k: index_ranges(v) for k, v in self.regions.items()}


def _backbone(ns: NetSpec, data: str) -> str:
    x = ns.conv("conv1", data, 96, 7, stride=2, pad=0, bias=False)
    ns.comment("BatchNorm after the first layer: faster convergence, less need for Dropout")
    x = ns.bn_scale("conv1/bn", "conv1/scale", x)
    x = ns.relu("relu_conv1", x)
    x = ns.pool("pool1", x, 3, 2)
    for name, s, e in FIRES:
        ns.comment(f"{name}: squeeze {s}, expand {e} + {e}")
        x = ns.fire(name, x, s, e)
        if name in POOL_AFTER:
            x = ns.pool(POOL_AFTER[name], x, 3, 2)
    return x


def _heads(ns: NetSpec, features: str, cfg: SqueezeConfig, suffix: str = "",
           ) -> tuple[str, str, str, str]:
    """Global head, local heads, fusion gate logits; returns (pooled, global, local, gate)."""
    k = cfg.points
    ns.comment("global head: global average pooling + 1x1 convolution to 2K (no FC); the bias "
               "starts at 0.5,\nthe centre of the crop in unit coordinates")
    pooled = ns.pool("pool10", features, method="AVE", global_pooling=True)
    g = ns.conv("conv10", pooled, 2 * k, 1, weight_filler=gaussian(0.01),
                bias_filler=constant(0.5))
    # without fusion (and without the align warp) the global head's points are the prediction
    top = "global_points" + suffix if cfg.fusion or cfg.align else "pred_points"
    glob = ns.flatten("global_flatten", g, top)
    if not cfg.fusion:
        return pooled, glob, None, None
    ns.comment("local heads: one spatial softmax per region pools that region's features,\n"
               "one InnerProduct per region predicts its points")
    regions = cfg.regions
    logits = ns.conv("region_logits", features, len(regions), 1, weight_filler=gaussian(0.01))
    rfeat = ns.python("region_pool", "RegionPool", [features, logits], "region_features")
    names = list(regions)
    tops = [f"region_features/{r}" for r in names]
    parts = ns.slice("region_slice", rfeat, tops, list(range(1, len(names))))
    heads = [ns.inner_product(f"local/{r}", part, 2 * len(regions[r]),
                              weight_filler=gaussian(0.01), bias_filler=constant(0.5))
             for r, part in zip(names, parts)]
    local = ns.concat("local_concat", heads, top="local_points" + suffix)
    ns.comment("fusion gate: one logit per point from the pooled features (sigmoid 0.5 at start)")
    gate = ns.inner_product("fusion_gate", pooled, k, weight_filler=gaussian(0.001))
    return pooled, glob, local, gate


def _attention(ns: NetSpec, pooled: str, cfg: SqueezeConfig) -> str:
    ns.comment("region attention (SE-style, training only): one weight per region for the loss,\n"
               "normalised to mean one inside RegionWeightedEuclideanLoss")
    x = ns.inner_product("attention_reduce", pooled, cfg.attention_reduce, weight_filler=xavier())
    x = ns.relu("attention_relu", x)
    x = ns.inner_product("attention_expand", x, len(cfg.regions), weight_filler=xavier())
    return ns.sigmoid("attention_sigmoid", x, "region_weights")


def _align_branch(ns: NetSpec, data: str, cfg: SqueezeConfig) -> tuple[str, str]:
    ns.comment("alignment branch (multi-task, parallel to detection): face box (cx, cy, w, h) "
               "and in-plane angle,\nin unit coordinates of the input crop and radians; the "
               "biases start at a centred box, angle 0")
    x = data
    for i, ch in enumerate((16, 32, 64, 64), start=1):
        x = ns.conv_relu(f"align_conv{i}", x, ch, 3, stride=2, relu_name=f"align_relu{i}")
    x = ns.pool("align_pool", x, method="AVE", global_pooling=True)
    x = ns.inner_product("align_fc", x, 64, weight_filler=xavier())
    x = ns.relu("align_fc_relu", x)
    center = ns.inner_product("align_center", x, 2, weight_filler=gaussian(0.001),
                              bias_filler=constant(0.5))
    size = ns.inner_product("align_size", x, 2, weight_filler=gaussian(0.001),
                            bias_filler=constant(0.8))
    box = ns.concat("align_box", [center, size])
    angle = ns.inner_product("align_angle", x, 1, weight_filler=gaussian(0.001))
    return box, angle


def squeeze_net(cfg: SqueezeConfig, deploy: bool = False) -> NetSpec:
    """The train_val or deploy net of a SqueezeNet config."""
    ns = NetSpec(cfg.name, conv_filler=msra() if cfg.init == "msra" else xavier())
    k = cfg.points
    s = cfg.align_input if cfg.align else cfg.input_size
    if deploy:
        data = ns.input("data", (1, 3, s, s))
    else:
        targets = {"points": [2 * k]}
        if cfg.align:
            targets.update(box=[4], angle=[1])
        ns.comment("inputs: fed by the training pipeline by blob name; points are unit "
                   "coordinates (x + 0.5) / W,\ninterleaved u0, v0, u1, v1, ..." +
                   ("; box = (cx, cy, w, h) in unit coordinates, angle in radians "
                    "(clockwise on screen)" if cfg.align else ""))
        for phase, n in (("train", cfg.train_batch), ("test", cfg.test_batch)):
            shapes = [{"dim": [n, 3, s, s]}] + [{"dim": [n, *d]} for d in targets.values()]
            ns.layer("Input", f"input_{phase}", (), ["data", *targets], phase=phase,
                     input_param={"shape": shapes})
        data = "data"
    params = {"regions": cfg.regions_param}
    if cfg.align:
        box, angle = _align_branch(ns, data, cfg)
        ns.comment(f"warp the face upright into {cfg.input_size}x{cfg.input_size} "
                   "(differentiable in box and angle)")
        aligned, theta = ns.python("align", "AffineAlign", [data, box, angle],
                                   ["aligned", "align_theta"],
                                   params={"height": cfg.input_size, "width": cfg.input_size})
        ns.comment("landmark net on the aligned face")
        features = _backbone(ns, aligned)
        pooled, glob_a, local_a, gate = _heads(ns, features, cfg, "_aligned")
        ns.comment("back to the input crop's coordinates, so that every loss is computed there")
        glob = ns.python("global_inverse", "InverseAffinePoints", [glob_a, theta],
                         "global_points")
        local = None if local_a is None else \
            ns.python("local_inverse", "InverseAffinePoints", [local_a, theta], "local_points")
    else:
        features = _backbone(ns, data)
        pooled, glob, local, gate = _heads(ns, features, cfg)
    if cfg.fusion:
        ns.comment("fusion: per point sigmoid(gate) * global + (1 - sigmoid(gate)) * local")
        pred = ns.python("fusion", "RegionFusion", [glob, local, gate], "pred_points",
                         params=params)
    else:
        ns.comment("no fusion (ablation): the global head alone predicts")
        pred = glob
    if deploy:
        return ns
    if cfg.attention:
        weights = _attention(ns, pooled, cfg)
        ns.comment("losses (TRAIN and TEST): the fused points with region weights; each head "
                   "on its own\nso that both stay good predictors for the gate to choose "
                   "between")
        ns.python("loss", "RegionWeightedEuclideanLoss", [pred, "points", weights],
                  ["loss", "loss_region_weights"], loss_weight=[1.0, 0.0],
                  params={**params, "min_weight": cfg.min_weight, **_penalty_param(cfg)})
    else:
        ns.comment("loss without region attention (ablation): every point weighs the same")
        _point_loss(ns, "loss", pred, 1.0, cfg)
    if cfg.fusion:
        _point_loss(ns, "global_loss", glob, cfg.aux_loss_weight, cfg)
        _point_loss(ns, "local_loss", local, cfg.aux_loss_weight, cfg)
    if cfg.align:
        ns.euclidean_loss("box_loss", box, "box", cfg.align_loss_weight)
        ns.euclidean_loss("angle_loss", angle, "angle", cfg.align_loss_weight)
    return ns


def _penalty_param(cfg: SqueezeConfig) -> dict:
    """The loss layer's ``penalty`` entry: none for the squared error (the layer's default)."""
    return {} if cfg.penalty == "l2" else {"penalty": cfg.penalty}


def _point_loss(ns: NetSpec, name: str, pred: str, loss_weight: float,
                cfg: SqueezeConfig) -> None:
    """An unweighted loss on points: EuclideanLoss, or the Wing penalty's Python layer."""
    if cfg.penalty == "l2":
        ns.euclidean_loss(name, pred, "points", loss_weight)
    else:
        ns.python(name, "RegionWeightedEuclideanLoss", [pred, "points"], name,
                  loss_weight=loss_weight,
                  params={"regions": cfg.regions_param, **_penalty_param(cfg)})


def squeeze_solver(cfg: SqueezeConfig, net_path: str, val_size: int) -> dict:
    """Adam with step decay (BatchNorm after conv1 tolerates the larger rate)."""
    return {
        "net": net_path,
        "test_iter": -(-val_size // cfg.test_batch),
        "test_interval": 500,
        "test_initialization": False,
        "type": "Adam",
        "base_lr": 1e-3,
        "momentum": 0.9,
        "momentum2": 0.999,
        "delta": 1e-8,
        "weight_decay": 5e-4,
        "lr_policy": "multistep",
        "gamma": 0.1,
        "stepvalue": [9000, 12000],
        "max_iter": 15000,
        "display": 50,
        "average_loss": 50,
        "snapshot": 1000,
        "snapshot_prefix": f"snapshots/{cfg.name}/{cfg.name}",
        "random_seed": 1,
    }


SQ77 = SqueezeConfig("squeeze77")

#: Every SqueezeNet network: name -> (config, summary).
SQUEEZE_NETS: dict[str, tuple[SqueezeConfig, str]] = {
    "squeeze68": (replace(SQ77, name="squeeze68", points=68),
                  "the 68-point twin of squeeze77 (pre-training model): same backbone and "
                  "layer names, so its backbone copies into squeeze77 by name"),
    "squeeze68_wing": (replace(SQ77, name="squeeze68_wing", points=68, penalty="wing"),
                       "squeeze68 trained with the Wing loss (pre-training for squeeze77_wing); "
                       "the deploy net is squeeze68's"),
    "squeeze77": (SQ77, "77 points (68 iBUG + 9 forehead): SqueezeNet v1.0 backbone, global + "
                        "local heads fused per point, region-attention-weighted loss"),
    "squeeze77_noattention": (replace(SQ77, name="squeeze77_noattention", attention=False),
                              "ablation: squeeze77 trained with a plain Euclidean loss (no "
                              "region attention); the deploy net is squeeze77's"),
    "squeeze77_nofusion": (replace(SQ77, name="squeeze77_nofusion", fusion=False),
                           "ablation: squeeze77's global head alone (no local heads, no "
                           "region fusion)"),
    "squeeze77_wing": (replace(SQ77, name="squeeze77_wing", penalty="wing"),
                       "squeeze77 trained with the Wing loss instead of the squared error on "
                       "every point loss; the deploy net is squeeze77's"),
    # the thesis' ablations again, under the Wing recipe of the shipped squeeze77
    "squeeze77_wing_noattention": (
        replace(SQ77, name="squeeze77_wing_noattention", penalty="wing", attention=False),
        "ablation: squeeze77_wing without region attention (deploy = squeeze77's)"),
    "squeeze77_wing_nofusion": (
        replace(SQ77, name="squeeze77_wing_nofusion", penalty="wing", fusion=False),
        "ablation: squeeze77_wing's global head alone (no local heads, no region fusion)"),
    "squeeze77_align": (replace(SQ77, name="squeeze77_align", align=True),
                        "squeeze77 behind a parallel alignment branch (box + angle), "
                        "a differentiable affine warp and the inverse warp of the points"),
}
