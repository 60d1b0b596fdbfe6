"""The layer reference (docs/layers.md), generated from the registry: one source of truth."""
from __future__ import annotations

from collections import defaultdict

from landmarknet.layers.registry import Registration, registered_types

HEADER = """# Layer reference

Generated from the layer registry by `python -m landmarknet.layer_docs > docs/layers.md`; a test
fails when it is out of date. Every type below builds from a prototxt into a PyTorch module whose
learnable Caffe blobs are `nn.Parameter`s (statistics are buffers), in Caffe's blob shapes.
Where a type comes from a Caffe fork, the origin column says which; see docs/caffe_compat.md for
the semantics we follow and where OpenCV's importer differs.

`Python` layers are resolved through the registry under `Python:<layer>` (the `layer` field of
`python_param`): landmarknet never imports a module named in a prototxt on its own. A net's own
Python layers (`caffe.Layer` classes) run as they are when their folder is given with
`--python-path DIR` (Python: `load_caffe(..., python_path=[DIR])`): `landmarknet.python_layers`
imports them with a stand-in for pycaffe and runs `setup`, `reshape`, `forward` and `backward`
on numpy arrays, as Caffe does (checked against the reference Caffe's own Python layer).

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

Everything else the tools know about a type is part of the same registration, so a type lives
in one file. All are optional keywords of `@register`:

* `cost=CostRule(fn, text)`: what `landmarknet analyze` counts, `fn(layer_info, training) ->
  (MACs, ops)` for the whole batch; shared rules are in `landmarknet/layers/costs.py`
  (`PER_OUTPUT`, `PER_BOTTOM`, `AFFINE`, `FREE` ...); family `activation` defaults to one op
  per output element. Without one the type is reported as not counted.
* `detail=fn(layer_param) -> str`: the parameter summary its box shows in drawings, after the
  type (`MAX 3×3 /2`); without one the box shows the type alone.
* `emit=fn(ctx, call) -> lines`: its standalone PyTorch code for `--emit-python`
  (`landmarknet/layers/emitting.py`); `emit=copy_module(...)` copies the type's own module
  class into the generated file, which suits modules written in plain torch. Without one,
  say why in `emit_reason`.
* `onnx=OnnxRule(...)`: ONNX export facts: `not_exportable="why"`, `saturating=True` (the
  export check then also compares its input), `moves_values=True`, `example_input=fn` (the
  values the export check feeds a net input that is one of its bottoms, when noise is not
  valid there: regions for ROIPooling).
* `view=True`: its tops are views of its bottom (no activation memory).
* `random=rule`: its random test weights (`--random-weights SEED`) when He-scaled weights
  and small biases are not plausible for it (`landmarknet/layers/random_weights.py`).

The columns below come from those hooks: **cost** is the rule `analyze` applies, **box** what
a drawn box shows after the type name, **emit** and **ONNX** whether `--emit-python` and
`landmarknet export` handle the type (the reasons where not are listed at the end).
`tests/layers/test_registry_battery.py` checks every row: the type builds, is counted, is
drawn, its emitted code gives the module's numbers and its ONNX file gives them in ONNX Runtime.
"""


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _box(reg: Registration) -> str:
    """What the type's box shows after its name: the detail hook's one-line description."""
    if reg.detail is None:
        return "—"
    doc = (reg.detail.__doc__ or "").strip().splitlines()
    return doc[0] if doc else "parameters"


def _row(name: str, reg: Registration) -> str:
    """One table row: the type, where it comes from, what it does, and its tool columns."""
    cost = reg.cost.text if reg.cost is not None else "not counted"
    emit = "yes" if reg.emit is not None else "no ¹"
    if reg.emit is not None and reg.emit_reason:
        emit = "yes, except ¹"
    onnx = "no ²" if reg.onnx.not_exportable else ("yes, except ²" if reg.onnx.refuses else "yes")
    return (f"| `{name}` | {reg.origin} | {_cell(reg.summary)} | {_cell(cost)} | "
            f"{_cell(_box(reg))} | {emit} | {onnx} |")


def _limits(types: dict[str, Registration]) -> list[str]:
    """The reasons behind the ¹ and ² marks."""
    out = ["## Limits", ""]
    for name, reg in sorted(types.items()):
        if reg.emit_reason:
            out.append(f"* ¹ `{name}`, emit: {reg.emit_reason}.")
        if reg.onnx.not_exportable:
            out.append(f"* ² `{name}`, ONNX: {reg.onnx.not_exportable}")
        elif reg.onnx.refuses:
            when = (reg.onnx.refuses.__doc__ or "").strip().splitlines()[0]
            out.append(f"* ² `{name}`, ONNX: not exported {when[0].lower() + when[1:]}")
    return out + [""]


def render() -> str:
    """The whole Markdown page."""
    types = registered_types()
    by_family: dict[str, list] = defaultdict(list)
    for name, reg in sorted(types.items()):
        by_family[reg.family].append((name, reg))
    out = [HEADER]
    for family in sorted(by_family):
        out += [f"## {family}", "",
                "| type | origin | what it does | cost | box | emit | ONNX |",
                "|---|---|---|---|---|---|---|"]
        out += [_row(name, reg) for name, reg in by_family[family]]
        out.append("")
    out += _limits(types)
    total = sum(len(v) for v in by_family.values())
    out.append(f"{total} registered types.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
