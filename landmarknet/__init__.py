"""landmarknet: Caffe prototxt as the source of truth, made live in PyTorch."""
__version__ = "0.1.0"
