"""Layer converters, one module per family, all registered in one registry."""
from landmarknet.layers.registry import (BlobSlot, Built, LayerSpec, converter_for, register,
                                         registered_types)

__all__ = ["BlobSlot", "Built", "LayerSpec", "converter_for", "register", "registered_types"]
