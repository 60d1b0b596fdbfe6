"""The layer reference (docs/layers.md), generated from the registry: one source of truth."""
from __future__ import annotations

from collections import defaultdict

from landmarknet.layers.registry import registered_types

HEADER = """# Layer reference

Generated from the layer registry by `python -m landmarknet.layer_docs > docs/layers.md`; a test
fails when it is out of date. Every type below builds from a prototxt into a PyTorch module whose
learnable Caffe blobs are `nn.Parameter`s (statistics are buffers), in Caffe's blob shapes.
Where a type comes from a Caffe fork, the origin column says which; see docs/caffe_compat.md for
the semantics we follow and where OpenCV's importer differs.

`Python` layers are resolved through the registry under `Python:<layer>` (the `layer` field of
`python_param`): landmarknet never imports a module named in a prototxt.

## Adding a layer type

```python
from torch import nn
from landmarknet.layers import BlobSlot, Built, LayerSpec, register

class Square(nn.Module):
    def forward(self, x):
        return x * x

@register("Square", family="custom", origin="my fork")
def square(spec: LayerSpec) -> Built:
    \"\"\"x squared, element-wise.\"\"\"
    spec.expect_bottoms(1)
    return Built(Square())   # list BlobSlot(attr, shape, filler) for each Caffe blob it owns
```

The module must run on the `meta` device (shapes are inferred that way) and must not fill its
blobs itself: the builder applies Caffe's fillers, or the weights file, afterwards.
"""


def render() -> str:
    """The whole Markdown page."""
    by_family: dict[str, list] = defaultdict(list)
    for name, reg in sorted(registered_types().items()):
        by_family[reg.family].append((name, reg))
    out = [HEADER]
    for family in sorted(by_family):
        out += [f"## {family}", "", "| type | origin | what it does |", "|---|---|---|"]
        out += [f"| `{name}` | {reg.origin} | {reg.summary} |" for name, reg in by_family[family]]
        out.append("")
    total = sum(len(v) for v in by_family.values())
    out.append(f"{total} registered types.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
