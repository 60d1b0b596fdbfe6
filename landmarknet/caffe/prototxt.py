"""Read and write Caffe's text formats (.prototxt nets and solvers) as Caffe itself reads them.

protobuf's text format does the parsing. Before it runs, a light walk over the tokens finds what
protobuf alone would reject without context (unknown fields, with the layer they sit in) and what
Caffe's forks accept as aliases (``ceil_mode`` for ``round_mode``). After it, the legacy forms are
upgraded the way Caffe's upgrade_proto.cpp does: V0 ``layers { layer { ... } }`` (upgrade_v0.py),
V1 ``layers``, net-level ``input``/``input_dim``/``input_shape``, and the solver's ``solver_type``
enum.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf import text_format

from landmarknet.caffe import caffe_pb2
from landmarknet.caffe.upgrade_v0 import is_v0_net, upgrade_v0_net
from landmarknet.errors import PrototxtError, shorten

__all__ = [
    "ParsedNet", "PrototxtWarning", "read_net", "parse_net", "read_solver", "parse_solver",
    "to_text", "write_text", "V1_TYPE_NAMES",
]


class PrototxtWarning(UserWarning):
    """A prototxt construct we accept but the user should know about (lenient skips, aliases)."""


# ---------------------------------------------------------------------------------------------
# Tokens


_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}<>\[\]:,;])|(?P<word>[^\s{}<>\[\]:,;#"']+)"""
)


@dataclass
class _Tok:
    kind: str
    text: str
    start: int
    line: int  # 1-based
    col: int  # 1-based


def _tokens(text: str, path: str | None) -> list[_Tok]:
    """Split text-format into tokens with 1-based line/column; comments and spaces dropped."""
    out: list[_Tok] = []
    line, line_start, pos = 1, 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only an unterminated quote gets here
            raise PrototxtError("unterminated string", path=path, line=line,
                                column=pos - line_start + 1)
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            out.append(_Tok(kind, m.group(), pos, line, pos - line_start + 1))
        newlines = m.group().count("\n")
        if newlines:
            line += newlines
            line_start = pos + m.group().rfind("\n") + 1
        pos = m.end()
    return out


@dataclass
class _Issue:
    line: int
    col: int
    name: str
    message_type: str
    layer_index: int | None
    #: For an enum field given a value its enum lacks: that value and the enum's known names.
    bad_value: tuple[str, tuple[str, ...]] | None = None


@dataclass
class _Walk:
    """What the token walk found: unknown fields, alias edits, where each layer starts."""

    unknown: list[_Issue] = field(default_factory=list)
    edits: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, replacement)
    #: Where each unknown field (name and value) sits in the text, for --lenient to blank out.
    unknown_spans: list[tuple[int, int]] = field(default_factory=list)
    aliases: list[tuple[int, str]] = field(default_factory=list)  # (line, message)
    layer_lines: dict[str, list[int]] = field(default_factory=lambda: {"layer": [], "layers": []})
    layer_names: dict[tuple[str, int], str] = field(default_factory=dict)


class _Walker:
    """Walks tokens along the message descriptors, noting unknown fields and aliases."""

    def __init__(self, toks: list[_Tok], path: str | None) -> None:
        self.toks, self.i, self.path, self.found = toks, 0, path, _Walk()

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            last = self.toks[-1] if self.toks else None
            raise PrototxtError("unexpected end of file (a '}' is missing?)", path=self.path,
                                line=last.line if last else 1)
        self.i += 1
        return tok

    def skip_value(self) -> None:
        """Skip one field's value, whatever its form."""
        tok = self.peek()
        if tok is not None and tok.text == ":":
            self.take()
            tok = self.peek()
        if tok is None:
            return
        if tok.text in "{<":
            self.skip_block()
        elif tok.text == "[":
            while self.take().text != "]":
                pass
        else:
            self.take()
            while self.peek() is not None and self.peek().kind == "string" and tok.kind == "string":
                self.take()

    def skip_block(self) -> None:
        depth = 0
        while True:
            t = self.take().text
            if t in "{<":
                depth += 1
            elif t in "}>":
                depth -= 1
                if depth == 0:
                    return

    def walk(self, desc: _descriptor.Descriptor, close: str | None, where: tuple[str, int] | None,
             ) -> None:
        """Walk the fields of one message until its closing token (or the end of the text)."""
        counters: dict[str, int] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    self.take()  # raises the end-of-file error
                return
            if close is not None and tok.text == close:
                self.take()
                return
            if tok.text in ",;":
                self.take()
                continue
            if tok.text == "[":  # extension or Any syntax: leave it to protobuf
                while self.take().text != "]":
                    pass
                self.skip_value()
                continue
            name_tok = self.take()
            fdesc = desc.fields_by_name.get(name_tok.text)
            if fdesc is None and desc.full_name == "caffe.PoolingParameter" \
                    and name_tok.text == "ceil_mode":
                self.alias_ceil_mode(name_tok)
                continue
            if fdesc is None:
                self.found.unknown.append(_Issue(name_tok.line, name_tok.col, name_tok.text,
                                                 desc.full_name, where[1] if where else None))
                self.skip_value()
                last = self.toks[self.i - 1]
                self.found.unknown_spans.append((name_tok.start, last.start + len(last.text)))
                continue
            if fdesc.type == _descriptor.FieldDescriptor.TYPE_ENUM and self.bad_enum(
                    name_tok, fdesc, desc, where):
                continue
            if fdesc.type != _descriptor.FieldDescriptor.TYPE_MESSAGE:
                if where and fdesc.name == "name" and desc.full_name in (
                        "caffe.LayerParameter", "caffe.V1LayerParameter"):
                    value = self.peek_scalar()
                    if value is not None:
                        self.found.layer_names[where] = value
                self.skip_value()
                continue
            if self.peek() is not None and self.peek().text == ":":
                self.take()
            opener = self.take()
            if opener.text not in "{<":
                raise PrototxtError(f"expected '{{' after '{fdesc.name}', found '{opener.text}'",
                                    path=self.path, line=opener.line, column=opener.col)
            child_where = where
            if desc.full_name == "caffe.NetParameter" and fdesc.name in ("layer", "layers"):
                idx = counters.get(fdesc.name, 0)
                counters[fdesc.name] = idx + 1
                self.found.layer_lines[fdesc.name].append(name_tok.line)
                child_where = (fdesc.name, idx)
            self.walk(fdesc.message_type, "}" if opener.text == "{" else ">", child_where)

    def bad_enum(self, name_tok: _Tok, fdesc, desc: _descriptor.Descriptor,
                 where: tuple[str, int] | None) -> bool:
        """An enum field whose (single, named) value its enum lacks: noted like an unknown
        field (a fork's value, e.g. R-FCN's ``normalization: PRE_FIXED``) and skipped."""
        j = self.i + (1 if self.peek() is not None and self.peek().text == ":" else 0)
        if j >= len(self.toks):
            return False
        value = self.toks[j]
        names = fdesc.enum_type.values_by_name
        if not re.fullmatch(r"[A-Za-z_]\w*", value.text) or value.text in names:
            return False
        self.found.unknown.append(_Issue(name_tok.line, name_tok.col, name_tok.text,
                                         desc.full_name, where[1] if where else None,
                                         (value.text, tuple(names))))
        self.skip_value()
        last = self.toks[self.i - 1]
        self.found.unknown_spans.append((name_tok.start, last.start + len(last.text)))
        return True

    def peek_scalar(self) -> str | None:
        """The string value after 'name' (without consuming), for naming layers in errors."""
        j = self.i + (1 if self.peek() is not None and self.peek().text == ":" else 0)
        if j < len(self.toks) and self.toks[j].kind == "string":
            return text_format.Tokenizer([self.toks[j].text]).ConsumeString()
        return None

    def alias_ceil_mode(self, name_tok: _Tok) -> None:
        """Forks write ``ceil_mode: true|false`` at field 13: rewrite it to ``round_mode``."""
        colon = self.take()
        value = self.take() if colon.text == ":" else colon
        truth = {"true": "CEIL", "t": "CEIL", "1": "CEIL", "True": "CEIL",
                 "false": "FLOOR", "f": "FLOOR", "0": "FLOOR", "False": "FLOOR"}
        if value.text not in truth:
            raise PrototxtError(f"ceil_mode must be true or false, got '{value.text}'",
                                path=self.path, line=value.line, column=value.col)
        mode = truth[value.text]
        self.found.edits.append((name_tok.start, name_tok.start + len(name_tok.text), "round_mode"))
        self.found.edits.append((value.start, value.start + len(value.text), mode))
        self.found.aliases.append(
            (name_tok.line, f"'ceil_mode: {value.text}' read as 'round_mode: {mode}' (a fork's "
                            "name for the same field 13)"))


def _blank(text: str, start: int, end: int) -> tuple[int, int, str]:
    """An edit that blanks text[start:end] but keeps its newlines (protobuf's line numbers)."""
    return start, end, re.sub(r"[^\n]", " ", text[start:end])


def _apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


# ---------------------------------------------------------------------------------------------
# Nets


@dataclass
class ParsedNet:
    """A net as Caffe would hold it after upgrading, and where each layer came from."""

    net: caffe_pb2.NetParameter
    path: str | None
    layer_lines: list[int | None]  # source line of net.layer[i] (None for synthesised layers)
    notes: list[str] = field(default_factory=list)  # upgrades performed, for the user

    def source(self, index: int) -> str | None:
        """'file:line' of layer ``index``, for error messages."""
        line = self.layer_lines[index] if index < len(self.layer_lines) else None
        if line is None:
            return self.path
        return f"{self.path or '<text>'}:{line}"


def _read_text(path: str | os.PathLike) -> str:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, /dev/zero never end
            raise PrototxtError("not a regular file (a folder, FIFO or device?)", path=str(path))
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PrototxtError(f"cannot read file: {exc.strerror or exc}", path=str(path)) from None
    if b"\x00" in raw[:4096]:
        raise PrototxtError("this is a binary file, not a text prototxt (a .caffemodel? pass it "
                            "as --weights)", path=str(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrototxtError(f"not UTF-8 text (byte {exc.start})", path=str(path)) from None


def _parse_text(text: str, msg: _message.Message, path: str | None, strict: bool) -> _Walk:
    """Walk, report unknown fields, apply aliases, then parse with protobuf into ``msg``."""
    walker = _Walker(_tokens(text, path), path)
    walker.walk(msg.DESCRIPTOR, None, None)
    found = walker.found
    for issue in found.unknown:
        layer = found.layer_names.get(("layer", issue.layer_index)) \
            if issue.layer_index is not None else None
        short = issue.message_type.split(".")[-1]
        layer = shorten(layer) if layer is not None else None
        name = shorten(issue.name)
        if issue.bad_value is not None:
            value, known = issue.bad_value
            what = (f"value '{shorten(value)}' of field '{name}' in {short} is not one Caffe "
                    f"knows ({', '.join(known)})")
            if strict:
                raise PrototxtError(what + "; if a Caffe fork added it, pass --lenient "
                                    "(strict=False) to skip the field with a warning",
                                    path=path, line=issue.line, column=issue.col, layer=layer)
            warnings.warn(f"{path or '<text>'}:{issue.line}:{issue.col}: skipped field '{name}':"
                          f" {what}" + (f" (layer '{layer}')" if layer else ""),
                          PrototxtWarning, stacklevel=3)
            continue
        if strict:
            raise PrototxtError(
                f"unknown field '{name}' in {short}. Check its spelling against Caffe's "
                "caffe.proto; if it belongs to a Caffe fork we do not know, pass --lenient "
                "(strict=False) to skip it with a warning",
                path=path, line=issue.line, column=issue.col, layer=layer)
        where = f"{path or '<text>'}:{issue.line}:{issue.col}"
        warnings.warn(f"{where}: skipped unknown field '{name}' in {short}"
                      + (f" (layer '{layer}')" if layer else ""), PrototxtWarning, stacklevel=3)
    for line, note in found.aliases:
        warnings.warn(f"{path or '<text>'}:{line}: {note}", PrototxtWarning, stacklevel=3)
    # Unknown fields (--lenient) are blanked out rather than left to protobuf's skipping, which
    # recurses once per nesting level (a RecursionError at a few hundred levels).
    edits = found.edits + [_blank(text, a, b) for a, b in found.unknown_spans]
    try:
        text_format.Parse(_apply_edits(text, edits), msg)
    except text_format.ParseError as exc:
        reason = re.sub(r"^\d+:\d+ : ", "", str(exc))
        if reason.startswith("'") and "': " in reason:  # protobuf quotes the whole line first
            reason = reason[reason.rindex("': ") + 3:]
        raise PrototxtError(shorten(reason), path=path, line=exc.GetLine(),
                            column=exc.GetColumn()) from None
    except RecursionError:  # only extension ('[...]') syntax nests without a schema's bound
        raise PrototxtError("the text nests blocks too deeply to be read", path=path) from None
    return found


def parse_net(text: str, *, path: str | None = None, strict: bool = True) -> ParsedNet:
    """Parse net text, upgrading legacy forms; ``strict=False`` skips unknown fields, warning."""
    net = caffe_pb2.NetParameter()
    found = _parse_text(text, net, path, strict)
    if len(net.layer) and len(net.layers):
        first_v1 = found.layer_lines["layers"][0] if found.layer_lines["layers"] else None
        raise PrototxtError(
            f"the net mixes new-style 'layer' ({len(net.layer)}) and legacy 'layers' "
            f"({len(net.layers)}) entries; Caffe refuses such a file. Convert the legacy "
            "'layers' blocks to 'layer' blocks (type names as strings)", path=path, line=first_v1)
    parsed = ParsedNet(net, path, list(found.layer_lines["layer"]))
    if len(net.layers):
        _upgrade_v1(parsed, found.layer_lines["layers"])
    _upgrade_inputs(parsed)
    _check_fillers(parsed)
    return parsed


def _fillers_of(msg: _message.Message, prefix: str):
    """(field path, FillerParameter) of every filler set inside ``msg``."""
    for fdesc, value in msg.ListFields():
        if fdesc.type != _descriptor.FieldDescriptor.TYPE_MESSAGE or fdesc.name == "blobs":
            continue
        repeated = (fdesc.is_repeated if hasattr(fdesc, "is_repeated")  # protobuf >= 5.28
                    else fdesc.label == _descriptor.FieldDescriptor.LABEL_REPEATED)
        items = list(value) if repeated else [value]
        for k, item in enumerate(items):
            where = prefix + fdesc.name + (f"[{k}]" if len(items) > 1 else "")
            if fdesc.message_type.full_name == "caffe.FillerParameter":
                yield where, item
            else:
                yield from _fillers_of(item, where + ".")


def _check_fillers(parsed: ParsedNet) -> None:
    """Refuse filler settings Caffe's fillers CHECK-fail on, naming the layer and the field."""
    from landmarknet.fillers import filler_problem
    for i, layer in enumerate(parsed.net.layer):
        for where, fp in _fillers_of(layer, ""):
            problem = filler_problem(fp)
            if problem is not None:
                line = parsed.layer_lines[i] if i < len(parsed.layer_lines) else None
                raise PrototxtError(f"{where}: {shorten(problem)}", path=parsed.path, line=line,
                                    layer=shorten(layer.name))


def read_net(path: str | os.PathLike, *, strict: bool = True) -> ParsedNet:
    """Read a net .prototxt file (see parse_net)."""
    return parse_net(_read_text(path), path=str(path), strict=strict)


# Caffe's V1 layer type enum -> V2 type string (upgrade_proto.cpp, UpgradeV1LayerType).
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# Fields that carry the same message in V1 and V2 layers (copied by name).
_SHARED_PARAMS = [f.name for f in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
                  if f.name.endswith("_param")]


def _upgrade_v1(parsed: ParsedNet, lines: list[int]) -> None:
    """Turn legacy ``layers { type: ENUM }`` entries into ``layer`` entries (UpgradeV1Net)."""
    net = parsed.net
    if is_v0_net(net):  # V0 (pre-2014) 'layers { layer { ... } }': first to V1, as Caffe does
        v0 = upgrade_v0_net(net, lines, parsed.path)
        for message in v0.warnings:
            warnings.warn(message, PrototxtWarning, stacklevel=3)
        parsed.notes.append(v0.note)
        lines = v0.lines
    new_layers = []
    for old in net.layers:
        layer = caffe_pb2.LayerParameter()
        layer.name = old.name
        type_name = caffe_pb2.V1LayerParameter.LayerType.Name(old.type)
        if type_name not in V1_TYPE_NAMES or not V1_TYPE_NAMES[type_name]:
            raise PrototxtError(f"legacy layer type {type_name} has no modern equivalent",
                                path=parsed.path, layer=old.name)
        layer.type = V1_TYPE_NAMES[type_name]
        layer.bottom.extend(old.bottom)
        layer.top.extend(old.top)
        layer.loss_weight.extend(old.loss_weight)
        layer.include.extend(old.include)
        layer.exclude.extend(old.exclude)
        layer.blobs.extend(old.blobs)
        # V1 kept per-blob learning-rate multipliers and share names in three parallel lists.
        n_specs = max(len(old.blobs_lr), len(old.weight_decay), len(old.param),
                      len(old.blob_share_mode))
        for j in range(n_specs):
            spec = layer.param.add()
            if j < len(old.param):
                spec.name = old.param[j]
            if j < len(old.blob_share_mode):
                spec.share_mode = old.blob_share_mode[j]
            if j < len(old.blobs_lr):
                spec.lr_mult = old.blobs_lr[j]
            if j < len(old.weight_decay):
                spec.decay_mult = old.weight_decay[j]
        for name in _SHARED_PARAMS:
            if old.HasField(name):
                getattr(layer, name).CopyFrom(getattr(old, name))
        new_layers.append(layer)
    del net.layers[:]
    net.layer.extend(new_layers)
    parsed.layer_lines = list(lines)
    parsed.notes.append(f"upgraded {len(new_layers)} legacy V1 'layers' entries")


def _upgrade_inputs(parsed: ParsedNet) -> None:
    """Net-level ``input`` + ``input_dim``/``input_shape`` become one Input layer (UpgradeNetInput)."""
    net = parsed.net
    if not net.input:
        if net.input_dim or net.input_shape:
            raise PrototxtError("input_dim/input_shape given without any 'input' name",
                                path=parsed.path)
        return
    n = len(net.input)
    if net.input_shape and net.input_dim:
        raise PrototxtError("give either input_shape or input_dim, not both", path=parsed.path)
    shapes: list[list[int]] = []
    if net.input_shape:
        if len(net.input_shape) != n:
            raise PrototxtError(f"{n} inputs but {len(net.input_shape)} input_shape entries",
                                path=parsed.path)
        shapes = [list(s.dim) for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * n:
            raise PrototxtError(f"{n} input(s) need {4 * n} input_dim values (4 each), got "
                                f"{len(net.input_dim)}", path=parsed.path)
        dims = list(net.input_dim)
        shapes = [dims[4 * i:4 * i + 4] for i in range(n)]
    else:
        _upgrade_bare_inputs(parsed)
        return
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    for dims in shapes:
        layer.input_param.shape.add().dim.extend(dims)
    layers = [layer, *net.layer]
    del net.layer[:]
    net.layer.extend(layers)
    del net.input[:]
    del net.input_dim[:]
    del net.input_shape[:]
    parsed.layer_lines = [None, *parsed.layer_lines]
    parsed.notes.append("net-level input fields became an 'Input' layer named 'input'")


def _upgrade_bare_inputs(parsed: ParsedNet) -> None:
    """Net-level ``input`` names without ``input_dim``/``input_shape``.

    Caffe's UpgradeNetInput just clears them (old files repeated the input names this way), so
    a name that a layer of the net produces (typically an ``Input`` layer of the same name) is
    dropped. A name that nothing produces would leave Caffe with an unknown bottom; OpenCV reads
    it as an input whose shape comes with the data, and so do we: it becomes an ``Input`` layer
    without a shape, which build_net asks for (``--input-shape NAME=...``, or ``forward`` takes
    it from the .npy it is given).
    """
    net = parsed.net
    produced = {t for layer in net.layer for t in layer.top}
    dropped = [name for name in net.input if name in produced]
    open_inputs = [name for name in net.input if name not in produced]
    del net.input[:]
    if dropped:
        parsed.notes.append(f"net-level input(s) {', '.join(dropped)} without dims dropped: "
                            "layers of the net produce them (as Caffe's UpgradeNetInput does)")
    if not open_inputs:
        return
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(open_inputs)
    layers = [layer, *net.layer]
    del net.layer[:]
    net.layer.extend(layers)
    parsed.layer_lines = [None, *parsed.layer_lines]
    parsed.notes.append(f"net-level input(s) {', '.join(open_inputs)} without dims became an "
                        "'Input' layer named 'input' whose shape comes from the data (Caffe "
                        "would refuse the net; OpenCV takes the shape from the input)")


# ---------------------------------------------------------------------------------------------
# Solvers

_SOLVER_TYPE_NAMES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def parse_solver(text: str, *, path: str | None = None, strict: bool = True,
                 ) -> caffe_pb2.SolverParameter:
    """Parse solver text; the deprecated ``solver_type`` enum becomes the ``type`` string."""
    solver = caffe_pb2.SolverParameter()
    _parse_text(text, solver, path, strict)
    if solver.HasField("solver_type"):
        if solver.HasField("type") and solver.type != _SOLVER_TYPE_NAMES[solver.solver_type]:
            raise PrototxtError(f"solver_type {solver.solver_type} contradicts type "
                                f"'{solver.type}'", path=path)
        solver.type = _SOLVER_TYPE_NAMES[solver.solver_type]
        solver.ClearField("solver_type")
    return solver


def read_solver(path: str | os.PathLike, *, strict: bool = True) -> caffe_pb2.SolverParameter:
    """Read a solver.prototxt file (see parse_solver)."""
    return parse_solver(_read_text(path), path=str(path), strict=strict)


# ---------------------------------------------------------------------------------------------
# Writing


def to_text(msg: _message.Message) -> str:
    """Caffe text format of a message (nets, solvers, layers)."""
    return text_format.MessageToString(msg)


def write_text(msg: _message.Message, path: str | os.PathLike) -> None:
    """Write a message as text format, atomically (a crash never leaves half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(to_text(msg))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
