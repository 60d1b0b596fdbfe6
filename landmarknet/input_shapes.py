"""Shapes of a data layer's tops as far as the prototxt tells them, without torch.

Data layers (Input, MemoryData, ImageData, Data, HDF5Data, DenseImageData, ImageSegData ...)
become graph inputs in :mod:`landmarknet.graph`. Their shapes come from the layer's parameters
where Caffe's own reshape logic can tell them without reading the data; otherwise they are
unknown (None) and must be given (``--input-shape``). This sits beside graph.py, below the build, so that turning a
NetParameter into a Graph needs protobuf only (no torch).
"""
from __future__ import annotations

from pathlib import Path

from landmarknet.caffe import caffe_pb2
from landmarknet.errors import LayerError

Shape = tuple[int, ...]


def data_top_shapes(layer: caffe_pb2.LayerParameter, net_path: str | None,
                    phase: str = "test") -> list[Shape | None]:
    """Shapes of a data layer's tops as far as the prototxt determines them (None: unknown);
    ``phase`` ("train" or "test") is the net's, for layers whose size depends on it."""
    n_tops = len(layer.top)
    t = layer.type
    crop = layer.transform_param.crop_size if layer.HasField("transform_param") else 0
    if t == "Input":
        shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
        if len(shapes) not in (0, 1, n_tops):
            raise LayerError(f"Input has {n_tops} tops but {len(shapes)} shapes (give 1 or "
                             f"{n_tops})", layer=layer.name, type=t)
        if len(shapes) == 1:
            shapes = shapes * n_tops
        return shapes or [None] * n_tops
    if t == "MemoryData":
        p = layer.memory_data_param
        out: list[Shape | None] = [(p.batch_size, p.channels, p.height, p.width)]
        return (out + [(p.batch_size,)])[:n_tops]
    if t == "ImageData":
        p = layer.image_data_param
        c = 3 if p.is_color else 1
        h, w = (crop, crop) if crop else (p.new_height, p.new_width)
        image = (p.batch_size, c, h, w) if h and w else None
        return ([image, (p.batch_size,)])[:n_tops]
    if t == "Data":
        n = layer.data_param.batch_size
        # Channels live in the database, not the prototxt: the caller must say (--input-shape).
        return ([None, (n,) if n else None])[:n_tops]
    if t == "HDF5Data":
        return _hdf5_shapes(layer, net_path)
    if t == "DenseImageData":
        return _dense_image_shapes(layer, crop)
    if t == "ImageSegData":
        return _image_seg_shapes(layer, crop)
    if t == "AnnotatedData":
        return _annotated_shapes(layer)
    if t == "VideoData":  # SSD's camera/video source: frames through the same transformer
        return (_annotated_shapes(layer)[:1] + [None] * n_tops)[:n_tops]
    if t in ("CPMData", "OPData"):
        return _openpose_shapes(layer, phase)
    return [None] * n_tops


def _openpose_shapes(layer: caffe_pb2.LayerParameter, phase: str) -> list[Shape | None]:
    """OpenPose's training data layers: images and the heatmap/PAF targets with their masks.

    cpm_data_layer.cpp (CPMData) and oPDataLayer.cpp (OPData) size both tops in the TRAIN phase
    from the crop (crop_size_y x crop_size_x) and the batch size, the label at 1/stride of it; in
    TEST from the record (unknown here). CPMData's images keep the record's channel count
    (ZheC's COCO records hold the image and its masks; unknown here), its label holds
    2 * (num_parts + 1) maps. OPData's images have 3 channels; its label count depends on the
    OpenPose model named in ``models`` (unknown here).
    """
    if phase != "train":
        return [None] * len(layer.top)
    n = layer.data_param.batch_size
    if layer.type == "CPMData":
        p = layer.cpm_transform_param
        h, w, stride = p.crop_size_y, p.crop_size_x, p.stride
        image = None
        label = (n, 2 * (p.num_parts + 1), h // stride, w // stride) if n and stride else None
    else:
        p = layer.op_transform_param
        h, w = p.crop_size_y, p.crop_size_x
        image = (n, 3, h, w) if n else None
        label = None
    return [image, label][:len(layer.top)]


def _annotated_shapes(layer: caffe_pb2.LayerParameter) -> list[Shape | None]:
    """SSD's AnnotatedData: images of the transformer's output size and the box list.

    annotated_data_layer.cpp sizes the image top from one record through the data
    transformer: the crop (crop_size, or crop_h x crop_w) when given, else resize_param's height
    x width, else the record's own size (unknown here). Channels are the record's: the encoded
    JPEGs of SSD's databases decode to 3 unless force_gray. The label top holds one row of 8
    numbers per box of the batch (item, class, instance, xmin, ymin, xmax, ymax, difficult), so
    its third axis changes from batch to batch: (1, 1, 1, 8) stands for it, as the layer's own
    setup does.
    """
    tp = layer.transform_param
    if tp.crop_size:
        h, w = tp.crop_size, tp.crop_size
    elif tp.crop_h or tp.crop_w:
        h, w = tp.crop_h, tp.crop_w
    elif tp.resize_param:
        # eric612's multi-scale nets list several sizes, one drawn per batch: the first
        # stands for them (give --input-shape for another)
        h, w = tp.resize_param[0].height, tp.resize_param[0].width
    else:
        h, w = 0, 0
    n, c = layer.data_param.batch_size, (1 if tp.force_gray else 3)
    image = (n, c, h, w) if (n and h and w) else None
    return [image, (1, 1, 1, 8)][:len(layer.top)]


def _image_seg_shapes(layer: caffe_pb2.LayerParameter, crop: int) -> list[Shape | None]:
    """DeepLab v2's ImageSegData: image, one-channel label map of the same size, and data_dim.

    image_seg_data_layer.cpp (deeplab-public-ver2) sizes image and label from
    transform_param.crop_size, else from the first listed image (resized to new_height x
    new_width when both are set; unknown here otherwise). Channels: 3 when is_color, else 1.
    data_dim holds each image's height and width, at most the crop's: (N, 1, 1, 2). The fork has
    3 tops and AutoTopBlobs, so a prototxt may name fewer (data[, label[, data_dim]]).
    """
    if len(layer.top) > 3:
        raise LayerError(f"ImageSegData has at most 3 tops (data, label, data_dim), got "
                         f"{len(layer.top)}", layer=layer.name, type=layer.type)
    p = layer.image_data_param
    if (p.new_height == 0) != (p.new_width == 0):
        raise LayerError("image_data_param.new_height and new_width must be set together "
                         "(DeepLab's ImageSegData refuses one without the other)",
                         layer=layer.name, type=layer.type)
    if layer.transform_param.HasField("mean_file"):
        raise LayerError("transform_param.mean_file: DeepLab's ImageSegData refuses a mean "
                         "file (give mean_value)", layer=layer.name, type=layer.type)
    h, w = (crop, crop) if crop else (p.new_height, p.new_width)
    n, c = p.batch_size, (3 if p.is_color else 1)
    known = bool(h and w and n)
    image = (n, c, h, w) if known else None
    label = (n, 1, h, w) if known else None
    dims = (n, 1, 1, 2) if n else None
    return [image, label, dims][:len(layer.top)]


def _dense_image_shapes(layer: caffe_pb2.LayerParameter, crop: int) -> list[Shape | None]:
    """SegNet's DenseImageData: an image top and a one-channel label map of the same size.

    dense_image_data_layer.cpp sizes both tops from transform_param.crop_size, else from
    crop_height/crop_width, else from new_height/new_width (the first image of the list decides
    when none is given: unknown here). Channels: 3 when is_color, else 1. ENet's fork divides
    the label's height and width by label_divide_factor in the last case.
    """
    if "dense_image_data_param" not in layer.DESCRIPTOR.fields_by_name:
        raise LayerError("the legacy V1 format has no DenseImageData layer", layer=layer.name,
                         type=layer.type)
    p = layer.dense_image_data_param
    for a, b in (("crop_height", "crop_width"), ("new_height", "new_width")):
        if (getattr(p, a) == 0) != (getattr(p, b) == 0):
            raise LayerError(f"dense_image_data_param.{a} and {b} must be set together "
                             "(Caffe refuses one without the other)", layer=layer.name,
                             type=layer.type)
    if crop:
        h, w = crop, crop
    elif p.crop_height:
        h, w = p.crop_height, p.crop_width
    else:
        h, w = p.new_height, p.new_width
    n, c = p.batch_size, (3 if p.is_color else 1)
    known = bool(h and w and n)
    image = (n, c, h, w) if known else None
    label = (n, 1, h, w) if known else None
    factor = p.label_divide_factor if "label_divide_factor" in p.DESCRIPTOR.fields_by_name \
        else 1
    if factor != 1 and not crop and not p.crop_height:
        # ENet's encoder: the label map at 1/factor, integer division, without a crop only
        if factor == 0:
            raise LayerError("dense_image_data_param.label_divide_factor must be at least 1",
                             layer=layer.name, type=layer.type)
        label = (n, 1, h // factor, w // factor) if known else None
    return [image, label][:len(layer.top)]


def _hdf5_shapes(layer: caffe_pb2.LayerParameter, net_path: str | None) -> list[Shape | None]:
    """HDF5Data: each top is a dataset of that name in the listed files; batch from the param."""
    p = layer.hdf5_data_param
    candidates = [Path(p.source)]
    if net_path:
        candidates.append(Path(net_path).parent / p.source)
    listing = next((c for c in candidates if c.is_file()), None)
    if listing is None:
        return [None] * len(layer.top)
    files = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
    if not files:
        return [None] * len(layer.top)
    import h5py  # only nets with an HDF5Data layer whose listing exists pay for h5py
    first = Path(files[0])
    if not first.is_absolute() and not first.exists():
        first = listing.parent / first
    try:
        with h5py.File(first, "r") as fh:
            return [(p.batch_size, *fh[top].shape[1:]) if top in fh else None
                    for top in layer.top]
    except OSError:
        return [None] * len(layer.top)
