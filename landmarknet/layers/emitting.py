"""What a layer's emitter works with: the context of the generated file and small code helpers.

``landmarknet.emit`` walks a built net and asks each layer's registration for its lines; an
emitter (``emit=`` in ``@register``) returns the ``forward`` lines of one layer and adds what the
file needs through the context: ``__init__`` lines (``ctx.init``) and helper functions or classes
copied into the file (``ctx.helper``), which a layer file declares once with ``helper_source``.
"""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Helper:
    """Source text copied into a generated file, and the helpers it needs before it."""

    name: str
    source: str
    deps: tuple[str, ...] = ()

    def function_names(self) -> list[str]:
        """Top-level functions it defines (forward code calls them, so no variable may shadow)."""
        return re.findall(r"^def (\w+)", self.source, flags=re.M)

    def class_names(self) -> list[str]:
        """Top-level classes it defines."""
        return re.findall(r"^class (\w+)", self.source, flags=re.M)


HELPERS: dict[str, Helper] = {}


def helper_source(name: str, source: str, deps: tuple[str, ...] = ()) -> str:
    """Declare a helper for generated files (at import of a layer file); returns the name."""
    if name in HELPERS and HELPERS[name].source != source:
        raise ValueError(f"emit helper {name!r} is declared twice")
    HELPERS[name] = Helper(name, source, deps)
    return name


#: Names generated forward code uses besides the helpers' functions.
RESERVED_NAMES = frozenset({
    "self", "torch", "nn", "F", "math", "sum", "max", "min", "abs", "round", "pow", "all", "any",
    "Net", "x", "y", "out", "getattr", "float", "int", "tuple", "list", "super", "range", "print",
    "len", "name", "value", "inputs"})


def reserved_names() -> set[str]:
    """Identifiers no blob variable may take: builtins used by the code and helper functions."""
    from landmarknet.layers.registry import load_builtin_layers
    load_builtin_layers()
    names = set(RESERVED_NAMES)
    for h in HELPERS.values():
        names.update(h.function_names())
    return names


@dataclass
class EmitContext:
    """The file being generated: helpers used, ``__init__`` and ``forward`` lines, variables."""

    net: Any  # the CaffeNet
    helpers: list[str] = field(default_factory=list)
    init: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    var: dict[str, str] = field(default_factory=dict)  # Caffe blob -> identifier
    taken: set[str] = field(default_factory=reserved_names)
    unsupported: list[str] = field(default_factory=list)
    copies: bool = False  # a layer module's own source was copied in (needs postponed hints)

    def helper(self, name: str) -> None:
        """Copy helper ``name`` (after the helpers it needs) into the file, once."""
        for dep in HELPERS[name].deps:
            self.helper(dep)
        if name not in self.helpers:
            self.helpers.append(name)

    def ident(self, blob: str) -> str:
        """The variable holding a Caffe blob (made once, then reused by in-place layers)."""
        if blob not in self.var:
            base = re.sub(r"\W", "_", blob)
            if not base or base[0].isdigit():
                base = "b_" + base
            if keyword.iskeyword(base):
                base += "_"
            name, k = base, 2
            while name in self.taken:
                name, k = f"{base}_{k}", k + 1
            self.taken.add(name)
            self.var[blob] = name
        return self.var[blob]

    def add_module(self, module: str, ctor: str) -> None:
        """An ``__init__`` line that makes submodule ``module`` from constructor text."""
        self.init.append(assign_module(module, ctor))


@dataclass
class EmitCall:
    """One layer being emitted: its built module and the variables of its blobs."""

    module: str  # submodule name in the net (and in the generated class)
    info: Any  # the builder's LayerInfo
    sub: nn.Module  # the built module of the layer
    ins: list[str]  # variables of the bottoms, in Caffe's order
    outs: list[str]  # variables of the tops

    @property
    def attr(self) -> str:
        """How generated code names this layer's submodule."""
        return attr(self.module)

    @property
    def x(self) -> str | None:
        """The first bottom's variable."""
        return self.ins[0] if self.ins else None

    @property
    def one(self) -> str | None:
        """The first top's variable."""
        return self.outs[0] if self.outs else None

    @property
    def ndim(self) -> int:
        """Dimensions of the first bottom."""
        return len(self.info.bottom_shapes[0]) if self.info.bottom_shapes else 0

    @property
    def param(self):
        """The layer's LayerParameter."""
        return self.info.node.param


def attr(module: str) -> str:
    """How generated code names a submodule: self.conv1, or getattr(self, "conv1/7x7_s2")."""
    if module.isidentifier() and not keyword.iskeyword(module):
        return f"self.{module}"
    return f"getattr(self, {module!r})"


def assign_module(module: str, ctor: str) -> str:
    """``self.name = ctor``, or ``self.add_module(name, ctor)`` for a name that is no identifier."""
    if module.isidentifier() and not keyword.iskeyword(module):
        return f"self.{module} = {ctor}"
    return f"self.add_module({module!r}, {ctor})"


def num(v: float) -> str:
    """A float literal that round-trips."""
    r = repr(float(v))
    return r if r not in ("inf", "-inf", "nan") else f"float({r!r})"


def tuple_text(v) -> str:
    """(3, 3) -> '(3, 3)', (5,) -> '(5,)'."""
    return "(" + ", ".join(str(int(x)) for x in v) + ("," if len(v) == 1 else "") + ")"


def shape_or_none(shape) -> str:
    """A shape literal, or None."""
    return "None" if shape is None else tuple_text(shape)


def pair_arg(v) -> str:
    """(3, 3) -> '3', (3, 5) -> '(3, 5)'."""
    a, b = (int(x) for x in v)
    return str(a) if a == b else f"({a}, {b})"


# ---------------------------------------------------------------------------------------------
# The shared emitter: copy the layer's own module class into the file

helper_source("restore_module", '''
class LayerFailure(RuntimeError):
    """An error raised by a copied layer module (landmarknet's LayerError or ShapeError)."""

    def __init__(self, message, layer=None, type=None):
        super().__init__(f"layer {layer!r} ({type}): {message}" if layer else message)


LayerError = ShapeError = LayerFailure


def restore_module(cls, state, params, buffers, constants=None):
    """A copied layer module made without its constructor: its plain attributes, then
    zero parameters and buffers of the right shapes (load_state_dict fills them), and the
    values of the buffers that are constants of the layer (not in the state_dict)."""
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in state.items():
        setattr(module, key, value)
    for key, shape in params.items():
        module.register_parameter(key, None if shape is None else nn.Parameter(torch.zeros(shape)))
    for key, (shape, persistent) in buffers.items():
        module.register_buffer(key, None if shape is None else torch.zeros(shape),
                               persistent=persistent)
    for key, (values, dtype) in (constants or {}).items():
        module.register_buffer(key, torch.tensor(values, dtype=getattr(torch, dtype)),
                               persistent=False)
    return module
''')

_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"training"}


def literal(value: Any) -> str | None:
    """Python source that rebuilds a plain value (None when the value is not plain data)."""
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return num(value)
    if isinstance(value, (list, tuple)):
        items = [literal(v) for v in value]
        if any(i is None for i in items):
            return None
        if isinstance(value, list):
            return "[" + ", ".join(items) + "]"
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, dict):
        pairs = [(literal(k), literal(v)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    return None


def _source_of(obj: Any) -> tuple[str, str]:
    """(helper name, source) of a class or function, or of a literal line of source."""
    import inspect
    import textwrap
    if isinstance(obj, str):
        return "src:" + obj.split("=")[0].strip(), "\n" + obj.strip() + "\n"
    return (f"copy:{obj.__module__}.{obj.__qualname__}",
            "\n" + textwrap.dedent(inspect.getsource(obj)))


def copy_module(*needs: Any):
    """An emitter that copies the layer's module class into the file, after ``needs`` (the
    module-level functions and constants, as ``"NAME = value"`` source, that its code uses).

    The copy is made without its constructor (``restore_module``): plain attributes are written
    as literals, parameters and buffers as zeros of their shapes; the state_dict fills them.
    A module with submodules or attributes that are not plain data is not expressible (None).
    """
    def emit(ctx: EmitContext, call: EmitCall) -> list[str] | None:
        sub = call.sub
        if sub._modules:
            return None
        state: dict[str, str] = {}
        for key, value in vars(sub).items():
            if key in _MODULE_INTERNALS:
                continue
            text = literal(value)
            if text is None:
                return None
            state[key] = text
        params = {k: None if p is None else tuple(int(d) for d in p.shape)
                  for k, p in sub._parameters.items()}
        buffers, constants = {}, {}
        for k, b in sub._buffers.items():
            if b is not None and k in sub._non_persistent_buffers_set:
                constants[k] = (b.tolist(), str(b.dtype).removeprefix("torch."))
            else:
                buffers[k] = (None if b is None else tuple(int(d) for d in b.shape), True)
        copies = [_source_of(obj) for obj in (*needs, type(sub))]
        taken = {c: h for h in ctx.helpers for c in HELPERS[h].class_names()}
        for name, source in copies:
            if any(taken.get(c, name) != name for c in Helper(name, source).class_names()):
                return None  # another class of that name is in the file already
        ctx.helper("restore_module")
        for name, source in copies:
            helper_source(name, source)
            ctx.helper(name)
        ctx.copies = True
        state_text = "{" + ", ".join(f"{k!r}: {v}" for k, v in state.items()) + "}"
        ctor = (f"restore_module({type(sub).__name__}, {state_text}, {params!r}, "
                f"{buffers!r}" + (f", {constants!r})" if constants else ")"))
        ctx.add_module(call.module, ctor)
        lhs = ", ".join(call.outs) if call.outs else "_"
        return [f"{lhs} = {call.attr}({', '.join(call.ins)})"]

    return emit
