"""Leave the framework with your model: a readable, standalone PyTorch file made from the graph.

``emit_python(net, "model.py")`` writes one module that needs only torch. Layers with weights
become ``nn.Conv2d``/``nn.ConvTranspose2d``/``nn.Linear``/``nn.PReLU`` or a few small helper
classes included in the file, registered under the same names as in landmarknet, so that

    net = Net()
    net.load_state_dict(torch.load("weights.pt", weights_only=True))

loads a state_dict saved by landmarknet (``landmarknet build ... --save weights.pt``). Layers
without weights become plain torch expressions in ``forward``; in-place Caffe layers reassign
their blob's variable, so the code reads like the prototxt. Caffe's pooling geometry (ceil
rounding, AVE divisor clipped to the padded input) is a helper function in the file.

Each layer type writes its own lines: the ``emit`` hook of its registration (its layer file in
``landmarknet/layers/``); types whose module is small, plain torch code share the emitter that
copies that module's class into the file. Types without an emitter (SSD's DetectionOutput, see
docs/layers.md), DummyData with fillers other than constant/uniform/gaussian, and unregistered
Python layers are listed in an ``EmitError``; with
``stubs=True`` they become modules that hold their blobs (so the state_dict still loads) and
raise ``NotImplementedError`` when called.
"""
from __future__ import annotations

import keyword
import os
from pathlib import Path

from landmarknet import __version__
from landmarknet.build import CaffeNet, LayerInfo
from landmarknet.errors import LandmarknetError
from landmarknet.layers.emitting import (HELPERS, EmitCall, EmitContext, attr, helper_source,
                                         tuple_text)
from landmarknet.layers.registry import registration_of


class EmitError(LandmarknetError):
    """The net holds layers that the code generator cannot express."""


helper_source("Unsupported", '''
class Unsupported(nn.Module):
    """A layer the generator cannot express: it holds the layer's blobs (so that the
    state_dict loads) and raises when called. Write its forward by hand."""

    def __init__(self, layer, type_name, blobs):
        super().__init__()
        self.layer, self.type_name = layer, type_name
        for name, shape, learnable in blobs:
            if learnable:
                self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
            else:
                self.register_buffer(name, torch.zeros(shape))

    def forward(self, *xs):
        raise NotImplementedError(f"layer {self.layer!r} of type {self.type_name} was not "
                                  "translated by landmarknet's code generator")
''')


def _c(text: str) -> str:
    """Text safe in a generated comment or docstring: no line breaks, quotes or backslashes
    that could end it (prototxt names may hold any character)."""
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))
    return out.replace("\\", "\\\\").replace('"', "'")


def _emit_layer(ctx: EmitContext, module: str, info: LayerInfo) -> list[str] | None:
    """Forward lines for one layer from its registration's emitter, or None if not expressible."""
    node = info.node
    reg = registration_of(node.type, node.param)
    if reg is None or reg.emit is None:
        return None
    call = EmitCall(module, info, ctx.net.get_submodule(module),
                    [ctx.ident(b) for b in node.param.bottom],
                    [ctx.ident(b) for b in node.param.top])
    try:
        return reg.emit(ctx, call)
    except LookupError:  # a Python layer whose class is not registered
        return None


def _stub(ctx: EmitContext, module: str, info: LayerInfo) -> list[str]:
    ctx.helper("Unsupported")
    blobs = [(s.attr, tuple(s.shape), s.learnable) for s in info.blobs]
    if any("." in a for a, _, _ in blobs):
        raise EmitError(f"layer '{info.node.name}' ({info.node.type}) keeps blobs in nested "
                        "modules; no stub can hold them")
    blob_text = "[" + ", ".join(f"({a!r}, {tuple_text(s)}, {lrn})" for a, s, lrn in blobs) + "]"
    ctx.add_module(module, f"Unsupported({info.node.name!r}, {info.node.type!r}, {blob_text})")
    ins = [ctx.ident(b) for b in info.node.param.bottom]
    outs = [ctx.ident(b) for b in info.node.param.top]
    lhs = ", ".join(outs) if outs else "_"
    return [f"{lhs} = {attr(module)}({', '.join(ins)})  # TODO: not translated"]


def emit_python(net: CaffeNet, out_path: str | os.PathLike | None = None,
                class_name: str = "Net", *, stubs: bool = False) -> str:
    """Generate the standalone module's source; write it to ``out_path`` when given."""
    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise EmitError(f"class name {class_name!r} is not a Python identifier")
    ctx = EmitContext(net)
    ctx.taken.add(class_name)
    g = net.caffe_graph
    in_vars = [ctx.ident(i.name) for i in g.inputs]
    out_node = next(n for n in net.graph.nodes if n.op == "output")
    outputs = {blob: fx.meta.get("ssa") for blob, fx in out_node.args[0].items()}
    snapshot = {ssa: blob for blob, ssa in outputs.items() if g.latest.get(blob) != ssa}
    snap_var: dict[str, str] = {}
    for module, info in net.layers.items():
        node = info.node
        where = f"'{node.name}' ({node.type}" + (f", {node.source}" if node.source else "") + ")"
        lines = _emit_layer(ctx, module, info)
        if lines is None:
            if not stubs:
                ctx.unsupported.append(where)
                continue
            lines = _stub(ctx, module, info)
        in_place = node.param.top and all(i < len(node.param.bottom) and node.param.bottom[i] == t
                                          for i, t in enumerate(node.param.top))
        note = " (in place)" if in_place else ""
        ctx.forward.append(f"# {_c(node.name)}: {_c(node.type)}{note}")
        ctx.forward += lines
        for ssa in node.tops:
            if ssa in snapshot:
                name = ctx.ident(f"{snapshot[ssa]} (output)")
                ctx.forward.append(f"{name} = {ctx.ident(g.blob_of[ssa])}")
                snap_var[ssa] = name
        for i, (owner, j) in sorted(info.shared_from.items()):
            mine = info.blobs[i].attr
            theirs = net.layers[owner].blobs[j].attr
            ctx.init.append(f"{attr(module)}.{mine} = {attr(owner)}.{theirs}  "
                            f"# shared param ({_c(net.layers[owner].node.name)})")
    if ctx.unsupported:
        raise EmitError("cannot express these layers as plain torch code: "
                        + "; ".join(ctx.unsupported)
                        + ". Pass stubs=True (--emit-stubs) to emit placeholders that hold their "
                        "weights and raise NotImplementedError, then write them by hand")
    ret = ", ".join(f"{blob!r}: {snap_var.get(ssa) or ctx.var[g.blob_of[ssa]]}"
                    for blob, ssa in outputs.items())
    source = _file_text(net, class_name, ctx, in_vars, ret, list(outputs))
    if out_path is not None:
        Path(out_path).write_text(source)
    return source


def _file_text(net: CaffeNet, class_name: str, ctx: EmitContext, in_vars: list[str], ret: str,
               outputs: list[str]) -> str:
    g = net.caffe_graph
    shapes = {i.name: tuple(int(d) for d in i.shape) for i in g.inputs}
    src = g.path or "<text>"
    types = sorted({info.node.type for info in net.layers.values()})
    lines = [
        f'"""{_c(g.name or "net")}: generated by landmarknet {__version__} from '
        f"{_c(Path(src).name)} (phase {g.state.phase}).",
        "",
        "Standalone: needs only torch. State-dict keys are landmarknet's, so weights saved with",
        "`landmarknet build NET.prototxt --weights W --save weights.pt` load directly:",
        "",
        f"    net = {class_name}().eval()",
        '    net.load_state_dict(torch.load("weights.pt", weights_only=True))',
        f"    out = net({', '.join(f'torch.zeros{s}' for s in shapes.values())})"
        f"  # dict: blob name -> tensor",
        "",
        f"Inputs: {_c(', '.join(f'{k} {list(v)}' for k, v in shapes.items()))}. "
        f"Outputs: {_c(', '.join(outputs))}.",
        f"Layer types: {_c(', '.join(types))}.",
        '"""',
        *(["from __future__ import annotations", "", "import math", ""] if ctx.copies else []),
        "import torch",
        "import torch.nn as nn",
        "import torch.nn.functional as F",
        "",
    ]
    for h in ctx.helpers:
        lines.append(HELPERS[h].source.rstrip("\n"))
        lines.append("")
    lines += ["",
              f"class {class_name}(nn.Module):",
              f'    """{_c(g.name or "net")} as plain torch modules; forward returns a dict of '
              'Caffe blobs."""',
              "",
              f"    input_names = {[i.name for i in g.inputs]!r}",
              f"    input_shapes = {shapes!r}",
              f"    output_names = {outputs!r}",
              "",
              "    def __init__(self):",
              "        super().__init__()"]
    lines += ["        " + line for line in ctx.init]
    lines += ["",
              f"    def forward(self, {', '.join(in_vars)}):"]
    for line in ctx.forward:
        lines.append("        " + line)
    lines.append(f"        return {{{ret}}}")
    lines += ["", "",
              'if __name__ == "__main__":',
              f"    net = {class_name}().eval()",
              f"    inputs = [torch.randn(s) for s in {class_name}.input_shapes.values()]",
              "    with torch.no_grad():",
              "        for name, value in net(*inputs).items():",
              '            print(name, tuple(value.shape))',
              ""]
    return "\n".join(lines)
