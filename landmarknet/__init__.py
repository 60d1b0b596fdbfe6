"""landmarknet: Caffe prototxt as the source of truth, made live in PyTorch.

The front door (see README, "Python")::

    import landmarknet as lm
    net = lm.load_caffe("deploy.prototxt", weights="net.caffemodel")  # torch.fx GraphModule
    faces = lm.load_model("heatmap4_68_bn").predict("face.jpg")       # boxes + 68 points
    lm.convert("net.caffemodel", "net.h5")                            # weights between formats
    blob = lm.blob_from_image(img, scale=1.0, size=(300, 300), mean=(104, 177, 123))  # as cv2.dnn

Importing the package is cheap: the names below load their module (and torch) on first use.
"""
__version__ = "0.1.0"

#: Public name -> the module that defines it, imported on first access (PEP 562).
_LAZY = {
    "load_caffe": "landmarknet.api",
    "load_model": "landmarknet.api",
    "convert": "landmarknet.api",
    "LandmarkPredictor": "landmarknet.api",
    "Face": "landmarknet.api",
    "blob_from_image": "landmarknet.preprocess",
    "blob_from_images": "landmarknet.preprocess",
    "build_net": "landmarknet.build",
    "CaffeNet": "landmarknet.build",
    "LandmarknetError": "landmarknet.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    """Load a front-door name from its module the first time it is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'landmarknet' has no attribute {name!r}")
    value = getattr(__import__(module, fromlist=[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The module's names plus the lazy ones, for tab completion."""
    return sorted(set(globals()) | set(_LAZY))
