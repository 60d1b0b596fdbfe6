"""Layer converters, one module per family, all registered in one registry."""
from landmarknet.layers.costs import CostRule
from landmarknet.layers.registry import (BlobSlot, Built, LayerSpec, OnnxRule, Registration,
                                         converter_for, register, registered_types,
                                         registration_of)

__all__ = ["BlobSlot", "Built", "CostRule", "LayerSpec", "OnnxRule", "Registration",
           "converter_for", "register", "registered_types", "registration_of"]
