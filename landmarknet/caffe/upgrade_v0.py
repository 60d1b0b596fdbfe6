"""Upgrade a V0 (pre-2014) Caffe net to V1 ``layers``, as Caffe's ``UpgradeV0Net`` does.

A V0 net wraps each layer twice: ``layers { layer { name type num_output kernelsize ... }
bottom top }``. The outer block (a ``V1LayerParameter``) holds only ``bottom`` and ``top``; the
inner ``layer`` (a ``V0LayerParameter``) holds everything else, in flat fields, with lower-case
type strings. :func:`upgrade_v0_net` turns such entries into ordinary V1 entries in place; the
prototxt reader then runs its V1 -> V2 upgrade on them, so a V0 file ends as the V2 net Caffe
(and OpenCV DNN, which vendors the same code) builds from it.

Step 1, padding layers (``UpgradeV0PaddingLayers``). A ``padding`` layer disappears: every layer
that reads its top reads the padding layer's bottom instead and takes its ``pad`` (replacing
any ``pad`` of its own). Blob names resolve to the latest earlier layer writing them, as in Caffe.

Step 2, each remaining layer (``UpgradeV0LayerParameter`` / ``UpgradeV0LayerType``).

Types (V0 string -> V1 enum -> V2 type): accuracy ACCURACY Accuracy; bnll BNLL BNLL;
concat CONCAT Concat; conv CONVOLUTION Convolution; data DATA Data; dropout DROPOUT Dropout;
euclidean_loss EUCLIDEAN_LOSS EuclideanLoss; flatten FLATTEN Flatten; hdf5_data HDF5_DATA
HDF5Data; hdf5_output HDF5_OUTPUT HDF5Output; im2col IM2COL Im2col; images IMAGE_DATA ImageData;
infogain_loss INFOGAIN_LOSS InfogainLoss; innerproduct INNER_PRODUCT InnerProduct; lrn LRN LRN;
multinomial_logistic_loss MULTINOMIAL_LOGISTIC_LOSS MultinomialLogisticLoss; pool POOLING
Pooling; relu RELU ReLU; sigmoid SIGMOID Sigmoid; softmax SOFTMAX Softmax; softmax_loss
SOFTMAX_LOSS SoftmaxWithLoss; split SPLIT Split; tanh TANH TanH; window_data WINDOW_DATA
WindowData. (``padding`` is consumed by step 1.)

Fields (V0 field: for which V0 types -> where it goes in the V1 layer):

* ``name``, ``blobs``, ``blobs_lr``, ``weight_decay``: every type -> the same V1 fields (the V1 ->
  V2 step then turns ``blobs_lr``/``weight_decay`` into ``param { lr_mult decay_mult }``).
* ``num_output``, ``biasterm``, ``weight_filler``, ``bias_filler``: conv -> ``convolution_param``
  (``num_output``, ``bias_term``, ``weight_filler``, ``bias_filler``); innerproduct ->
  ``inner_product_param`` (same names).
* ``pad``, ``kernelsize``, ``stride``: conv -> ``convolution_param`` (``pad``, ``kernel_size``,
  ``stride``); pool -> ``pooling_param`` (same). ``group``: conv -> ``convolution_param.group``.
* ``pool`` (MAX, AVE, STOCHASTIC): pool -> ``pooling_param.pool`` (same names).
* ``dropout_ratio``: dropout -> ``dropout_param.dropout_ratio``.
* ``local_size``, ``alpha``, ``beta``, ``k``: lrn -> ``lrn_param`` (same names).
* ``concat_dim``: concat -> ``concat_param.concat_dim``.
* ``source``: data, hdf5_data, images, window_data, infogain_loss -> ``<type>_param.source``
  (``data_param``, ``hdf5_data_param``, ``image_data_param``, ``window_data_param``,
  ``infogain_loss_param``). ``batchsize``: data, hdf5_data, images, window_data ->
  ``batch_size`` there. ``rand_skip``: data, images -> ``rand_skip`` there.
* ``shuffle_images``, ``new_height``, ``new_width``: images -> ``image_data_param`` (``shuffle``,
  ``new_height``, ``new_width``).
* ``det_fg_threshold``, ``det_bg_threshold``, ``det_fg_fraction``, ``det_context_pad``,
  ``det_crop_mode``: window_data -> ``window_data_param`` (``fg_threshold``, ``bg_threshold``,
  ``fg_fraction``, ``context_pad``, ``crop_mode``).
* ``hdf5_output_param``: hdf5_output -> ``hdf5_output_param``.
* ``scale``, ``meanfile``, ``cropsize``, ``mirror``: every type -> ``transform_param`` (``scale``,
  ``mean_file``, ``crop_size``, ``mirror``).

Only fields written in the file count (protobuf presence), as in Caffe.

What Caffe logs and drops, we drop with a warning naming file, line and layer (the upgrade goes
on, as Caffe's does): a field given for a type that does not use it (``num_output`` on a relu
...), and ``new_num``/``new_channels`` (no V1 equivalent), an unconsumed padding layer, a
padding layer replacing a different ``pad`` of the conv/pool it feeds.

What is refused, with a :class:`~landmarknet.errors.PrototxtError` naming file, line (of the
``layers`` entry) and layer:

* a type string not in the table above ("unknown V0 layer type", Caffe's fatal "Unknown layer
  name"), or a nested ``layer`` without ``type``;
* a padding layer whose top feeds a layer other than conv or pool, a conv/pool with more than one
  bottom reading a padding layer, a padding layer with more or fewer than one bottom or top when
  it is read (Caffe's CHECKs in UpgradeV0PaddingLayers);
* a bottom that no earlier layer writes and that is no net ``input`` (Caffe's fatal "Unknown blob
  input");
* a V0 net whose ``layers`` entries are not all V0 (an entry without nested ``layer``), or an
  entry that sets V1 fields (``name``, ``type``, ``convolution_param`` ...) beside its nested
  ``layer``: Caffe's upgrade keeps only ``bottom``, ``top`` and the nested layer, so those
  settings would be lost without a word (and a V0 net's non-V0 entry ends with no type).

Net-level fields are left as they are (Caffe rebuilds the net from ``name``, ``input``,
``input_dim`` and ``force_backward`` only; fields younger than V0 such as ``input_shape`` or
``state`` are kept here rather than dropped).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import PrototxtError

__all__ = ["V0_TYPES", "V0Upgrade", "is_v0_net", "upgrade_v0_net"]

#: V0 type string -> V1 ``LayerType`` enum name (Caffe's UpgradeV0LayerType).
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

_PADDING = "padding"
# V1 enum / V2 spellings (lower case, no '_') -> V0 type, for hints: "Convolution" -> "conv".
_V1_SPELLING = {v1.lower().replace("_", ""): v0 for v0, v1 in V0_TYPES.items()}
_V1_SPELLING["softmaxwithloss"] = "softmax_loss"
_ANY = "*"

# V0 field -> {V0 type (or _ANY): "v1_param_field.field" (or a whole "v1_param_field")}.
_FIELDS: dict[str, dict[str, str]] = {
    "num_output": {"conv": "convolution_param.num_output",
                   "innerproduct": "inner_product_param.num_output"},
    "biasterm": {"conv": "convolution_param.bias_term",
                 "innerproduct": "inner_product_param.bias_term"},
    "weight_filler": {"conv": "convolution_param.weight_filler",
                      "innerproduct": "inner_product_param.weight_filler"},
    "bias_filler": {"conv": "convolution_param.bias_filler",
                    "innerproduct": "inner_product_param.bias_filler"},
    "pad": {"conv": "convolution_param.pad", "pool": "pooling_param.pad"},
    "kernelsize": {"conv": "convolution_param.kernel_size", "pool": "pooling_param.kernel_size"},
    "group": {"conv": "convolution_param.group"},
    "stride": {"conv": "convolution_param.stride", "pool": "pooling_param.stride"},
    "pool": {"pool": "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": {"data": "data_param.source", "hdf5_data": "hdf5_data_param.source",
               "images": "image_data_param.source", "window_data": "window_data_param.source",
               "infogain_loss": "infogain_loss_param.source"},
    "scale": {_ANY: "transform_param.scale"},
    "meanfile": {_ANY: "transform_param.mean_file"},
    "batchsize": {"data": "data_param.batch_size", "hdf5_data": "hdf5_data_param.batch_size",
                  "images": "image_data_param.batch_size",
                  "window_data": "window_data_param.batch_size"},
    "cropsize": {_ANY: "transform_param.crop_size"},
    "mirror": {_ANY: "transform_param.mirror"},
    "rand_skip": {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"},
    "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}
# Copied for every type (handled apart from the table); the rest have no V1 home at all.
_GENERAL = {"name", "type", "blobs", "blobs_lr", "weight_decay"}
# What a V0 entry's outer block may hold besides the nested layer.
_OUTER_OK = {"layer", "bottom", "top"}


@dataclass
class V0Upgrade:
    """What :func:`upgrade_v0_net` did: source lines of the kept entries, warnings, a summary."""

    lines: list[int | None]
    warnings: list[str] = field(default_factory=list)
    note: str = ""


def is_v0_net(net: caffe_pb2.NetParameter) -> bool:
    """Caffe's NetNeedsV0ToV1Upgrade: some ``layers`` entry holds a nested V0 ``layer``."""
    return any(entry.HasField("layer") for entry in net.layers)


def upgrade_v0_net(net: caffe_pb2.NetParameter, lines: list[int], path: str | None,
                   ) -> V0Upgrade:
    """Replace the V0 entries of ``net.layers`` by V1 entries (padding layers merged away).

    ``lines`` are the source lines of the ``layers`` entries (for messages); the result's
    ``lines`` are those of the entries kept. Raises PrototxtError for what Caffe refuses.
    """
    def line_of(i: int) -> int | None:
        return lines[i] if i < len(lines) else None

    def where(i: int) -> dict:
        entry = net.layers[i]
        name = entry.layer.name or entry.name or None
        return {"path": path, "line": line_of(i), "layer": name}

    def at(i: int) -> str:
        line = line_of(i)
        text = f"{path or '<text>'}" + (f":{line}" if line is not None else "")
        name = net.layers[i].layer.name
        return text + (f" (layer '{name}')" if name else "")

    _check_entries(net, where)
    out = V0Upgrade(lines=[])
    merged, kept = _merge_padding(net, where, at, out.warnings)
    upgraded = []
    for i, entry in kept:
        upgraded.append(_upgrade_layer(entry, at(i), out.warnings))
        out.lines.append(line_of(i))
    n_pad = len(net.layers) - len(kept)
    del net.layers[:]
    net.layers.extend(upgraded)
    out.note = (f"upgraded {len(upgraded)} V0 (pre-2014) layers to V1"
                + (f"; {merged} padding layer(s) merged into the conv/pool layers they feed"
                   if merged else "")
                + (f"; {n_pad - merged} unused padding layer(s) dropped"
                   if n_pad > merged else ""))
    return out


def _check_entries(net: caffe_pb2.NetParameter, where) -> None:
    """Every entry is V0 and carries nothing Caffe's V0 upgrade would silently drop."""
    for i, entry in enumerate(net.layers):
        if not entry.HasField("layer"):
            raise PrototxtError(
                "this V0 (pre-2014) net mixes V0 'layers { layer { ... } }' entries with a V1 "
                "entry (no nested 'layer'); Caffe's V0 upgrade would leave this entry without a "
                "name or type. Write it as V0 too, or convert the whole file to one format",
                **where(i))
        extra = [f.name for f, _ in entry.ListFields() if f.name not in _OUTER_OK]
        if extra:
            raise PrototxtError(
                f"a V0 'layers' entry sets V1 field(s) {', '.join(extra)} beside its nested "
                "'layer'; Caffe's V0 upgrade keeps only bottom, top and the nested layer, so "
                "they would be lost. Move the settings into the nested 'layer' (V0 field names)",
                **where(i))
        v0 = entry.layer
        if not v0.HasField("type"):
            raise PrototxtError("V0 layer without a 'type'", **where(i))
        if v0.type != _PADDING and v0.type not in V0_TYPES:
            near = _V1_SPELLING.get(v0.type.lower().replace("_", "")) or \
                next(iter(difflib.get_close_matches(v0.type.lower(), [*V0_TYPES, _PADDING], 1)),
                     None)
            hint = f" Did you mean '{near}'?" if near else ""
            raise PrototxtError(
                f"unknown V0 layer type '{v0.type}'.{hint} Caffe's V0 upgrade knows "
                f"{', '.join(sorted([*V0_TYPES, _PADDING]))}", **where(i))


def _merge_padding(net, where, at, warnings: list[str]):
    """UpgradeV0PaddingLayers: fold each padding layer into the conv/pool layers reading it."""
    last_writer: dict[str, int] = {name: -1 for name in net.input}
    kept: list[tuple[int, caffe_pb2.V1LayerParameter]] = []
    used: set[int] = set()
    for i, entry in enumerate(net.layers):
        v0 = entry.layer
        copy = None
        if v0.type != _PADDING:
            copy = caffe_pb2.V1LayerParameter()
            copy.CopyFrom(entry)
            kept.append((i, copy))
        for j, blob in enumerate(entry.bottom):
            if blob not in last_writer:
                raise PrototxtError(
                    f"bottom '{blob}' is written by no earlier layer and is no net input "
                    "(Caffe's V0 upgrade stops here: 'Unknown blob input')", **where(i))
            src = last_writer[blob]
            if src < 0 or net.layers[src].layer.type != _PADDING:
                continue
            pad = net.layers[src].layer
            named = f"padding layer {at(src)}"
            if v0.type not in ("conv", "pool"):
                raise PrototxtError(
                    f"reads '{blob}' from {named}, but Caffe merges a padding layer only into a "
                    f"conv or pool layer that reads it, not into a '{v0.type}' layer",
                    **where(i))
            if len(entry.bottom) != 1:
                raise PrototxtError(
                    f"reads '{blob}' from {named} but has {len(entry.bottom)} bottoms; a "
                    f"{v0.type} layer fed by a padding layer must have exactly one", **where(i))
            src_entry = net.layers[src]
            if len(src_entry.bottom) != 1 or len(src_entry.top) != 1:
                raise PrototxtError(
                    f"the padding layer has {len(src_entry.bottom)} bottom(s) and "
                    f"{len(src_entry.top)} top(s), and {at(i)} reads it; Caffe merges a padding "
                    "layer only with exactly one of each", **where(src))
            if v0.HasField("pad") and v0.pad != pad.pad:
                warnings.append(f"{at(i)}: pad {v0.pad} replaced by pad {pad.pad} of "
                                f"{named}, as Caffe's V0 upgrade does")
            copy.layer.pad = pad.pad
            copy.bottom[j] = src_entry.bottom[0]
            used.add(src)
        for blob in entry.top:
            last_writer[blob] = i
    for i, entry in enumerate(net.layers):
        if entry.layer.type == _PADDING and i not in used:
            warnings.append(f"{at(i)}: padding layer read by no conv or pool layer; dropped, as "
                            "Caffe's V0 upgrade does")
    return len(used), kept


def _upgrade_layer(entry: caffe_pb2.V1LayerParameter, at: str, warnings: list[str],
                   ) -> caffe_pb2.V1LayerParameter:
    """UpgradeV0LayerParameter: one V0 entry as a V1 entry."""
    v0 = entry.layer
    kind = v0.type
    new = caffe_pb2.V1LayerParameter()
    new.bottom.extend(entry.bottom)
    new.top.extend(entry.top)
    if v0.HasField("name"):
        new.name = v0.name
    new.type = caffe_pb2.V1LayerParameter.LayerType.Value(V0_TYPES[kind])
    new.blobs.extend(v0.blobs)
    new.blobs_lr.extend(v0.blobs_lr)
    new.weight_decay.extend(v0.weight_decay)
    for fdesc, value in v0.ListFields():
        if fdesc.name in _GENERAL:
            continue
        targets = _FIELDS.get(fdesc.name)
        if targets is None:
            warnings.append(f"{at}: V0 field '{fdesc.name}' has no V1 equivalent; dropped, as "
                            "Caffe's V0 upgrade does")
            continue
        target = targets.get(kind) or targets.get(_ANY)
        if target is None:
            warnings.append(f"{at}: V0 field '{fdesc.name}' is not used by a '{kind}' layer "
                            f"(only by {', '.join(targets)}); dropped, as Caffe's V0 upgrade "
                            "does")
            continue
        _assign(new, target, fdesc, value)
    return new


def _assign(layer: caffe_pb2.V1LayerParameter, target: str, src_fdesc, value) -> None:
    """Write ``value`` at ``param.field`` of the V1 layer (append for repeated fields)."""
    param_name, _, field_name = target.partition(".")
    param = getattr(layer, param_name)
    if not field_name:  # a whole message
        param.CopyFrom(value)
        return
    fdesc = param.DESCRIPTOR.fields_by_name[field_name]
    if fdesc.enum_type is not None:  # same value names in V0 and V1 (MAX, AVE, STOCHASTIC)
        value = fdesc.enum_type.values_by_name[src_fdesc.enum_type.values_by_number[value].name
                                               ].number
    if fdesc.message_type is not None:
        getattr(param, field_name).CopyFrom(value)
    elif fdesc.is_repeated:
        getattr(param, field_name).append(value)
    else:
        setattr(param, field_name, value)
