"""Seeded mutators: each takes the original (text or bytes) and a random.Random, and returns the
mutated input. Names are what docs/bad_inputs.md shows; every mutator is deterministic given
its generator."""
from __future__ import annotations

import json
import random
import re
from typing import Any, Callable

# ------------------------------------------------------------------------------ text (prototxt)

HUGE_NUMBERS = ["2000000000", "4294967296", "99999999999999999999", "-1", "-2147483649", "0",
                "1000000000", "65536", "-7", "3000000000"]
ODD_FLOATS = ["nan", "inf", "-inf", "1e39", "-1e39", "1e-45", "0", "-0.0"]
ODD_NAMES = ["", "None", "True", "lambda", "import", "_modules", "__init__", "__class__", "a.b",
             "a/b", "a//b", "ü-ñ-名前", " ", "0", "self", "forward", "x" * 3000, "a\\nb", "'",
             "data", "input", "output", "__getattr__", "training"]
LAYER_TYPES = ["Convolution", "Deconvolution", "Pooling", "InnerProduct", "ReLU", "PReLU",
               "Eltwise", "Concat", "Slice", "Split", "Flatten", "Reshape", "Crop", "Softmax",
               "LRN", "MVN", "BatchNorm", "Scale", "Bias", "Dropout", "Power", "Tile", "Permute",
               "Normalize", "PriorBox", "DetectionOutput", "Upsample", "Interp", "ArgMax",
               "Reduction", "EuclideanLoss", "SoftmaxWithLoss", "Accuracy", "Input",
               "DummyData", "Silence", "Embed", "Axpy", "ShuffleChannel", "Python", "Data",
               "Threshold", "Clip", "Exp", "Log", "Swish", "ELU", "TanH", "Sigmoid", "AbsVal"]


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True) or [""]


def delete_line(text: str, rng: random.Random) -> str:
    lines = _lines(text)
    del lines[rng.randrange(len(lines))]
    return "".join(lines)


def duplicate_line(text: str, rng: random.Random) -> str:
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return "".join(lines)


def swap_lines(text: str, rng: random.Random) -> str:
    lines = _lines(text)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


def truncate_text(text: str, rng: random.Random) -> str:
    return text[:rng.randrange(len(text) + 1)]


def byte_flip_text(text: str, rng: random.Random) -> bytes:
    """A few bits flipped anywhere: may leave invalid UTF-8 (so it returns bytes)."""
    return byte_flip(text.encode(), rng)


def _replace_match(text: str, pattern: str, rng: random.Random, new: Callable[[str], str]) -> str:
    matches = list(re.finditer(pattern, text))
    if not matches:
        return text
    m = rng.choice(matches)
    return text[:m.start(1)] + new(m.group(1)) + text[m.end(1):]


def huge_number(text: str, rng: random.Random) -> str:
    return _replace_match(text, r":\s*(-?\d+)\b(?!\.)", rng, lambda _: rng.choice(HUGE_NUMBERS))


def negative_number(text: str, rng: random.Random) -> str:
    return _replace_match(text, r":\s*(\d+(?:\.\d+)?)", rng, lambda v: "-" + v)


def odd_float(text: str, rng: random.Random) -> str:
    return _replace_match(text, r":\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)", rng,
                          lambda _: rng.choice(ODD_FLOATS))


def odd_name(text: str, rng: random.Random) -> str:
    return _replace_match(text, r'(?:name|top|bottom):\s*"([^"\n]*)"', rng,
                          lambda _: rng.choice(ODD_NAMES))


def swap_type(text: str, rng: random.Random) -> str:
    return _replace_match(text, r'\btype:\s*"(\w+)"', rng, lambda _: rng.choice(LAYER_TYPES))


def deep_nesting(text: str, rng: random.Random) -> str:
    """Unknown blocks nested hundreds deep inside the first layer (read with --lenient)."""
    depth = rng.choice([50, 300, 600])
    block = "zz_unknown { " * depth + "}" * depth + " "
    i = text.find("layer {")
    if i < 0:
        return block + text
    i += len("layer {")
    return text[:i] + " " + block + text[i:]


def insert_punct(text: str, rng: random.Random) -> str:
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice(["{", "}", ":", "<", ">", "[", "]", ",", '"', "#", "\x00"]) + \
        text[i:]


def repeat_layer(text: str, rng: random.Random) -> str:
    """A whole layer block repeated (duplicate names and tops)."""
    starts = [m.start() for m in re.finditer(r"(?m)^layers? \{", text)]
    if not starts:
        return duplicate_line(text, rng)
    k = rng.randrange(len(starts))
    end = starts[k + 1] if k + 1 < len(starts) else len(text)
    block = text[starts[k]:end]
    return text[:end] + block + text[end:]


TEXT_MUTATORS: dict[str, Callable[[str, random.Random], str | bytes]] = {
    "delete-line": delete_line, "duplicate-line": duplicate_line, "swap-lines": swap_lines,
    "truncate": truncate_text, "byte-flip": byte_flip_text, "huge-number": huge_number,
    "negative-number": negative_number, "odd-float": odd_float, "odd-name": odd_name,
    "swap-type": swap_type, "deep-nesting": deep_nesting, "insert-punct": insert_punct,
    "repeat-layer": repeat_layer,
}

# ------------------------------------------------------------------------------ bytes


def byte_flip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 8, 64])):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def truncate_bytes(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.choice([1, 4, 100])) + data[i:]


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    j = min(len(data), i + rng.choice([8, 64, 1024]))
    return data[:j] + data[i:j] + data[j:]


def zero_chunk(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    n = rng.choice([4, 64, 4096])
    return data[:i] + bytes(min(n, len(data) - i)) + data[i + n:]


def ff_chunk(data: bytes, rng: random.Random) -> bytes:
    """0xff bytes: varints and lengths that claim gigabytes."""
    i = rng.randrange(len(data) + 1)
    n = rng.choice([1, 5, 10])
    return data[:i] + b"\xff" * min(n, len(data) - i) + data[i + n:]


BYTE_MUTATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "byte-flip": byte_flip, "truncate": truncate_bytes, "insert-bytes": insert_bytes,
    "duplicate-chunk": duplicate_chunk, "zero-chunk": zero_chunk, "ff-chunk": ff_chunk,
}

# ------------------------------------------------------------------------------ JSON

ODD_VALUES: list[Any] = [None, "", "x", -1, 0, 1e308, -1e308, 10**30, True, [], {}, [1, 2, 3],
                         {"a": 1}, "../../etc/passwd", float("nan"), 0.0, 2**31, "NaN"]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for k in path[:-1]:
        obj = obj[k]
    return obj


def json_set_value(obj: Any, rng: random.Random) -> Any:
    path = rng.choice(_paths(obj))
    _parent(obj, path)[path[-1]] = rng.choice(ODD_VALUES)
    return obj


def json_delete_key(obj: Any, rng: random.Random) -> Any:
    keyed = [p for p in _paths(obj) if isinstance(_parent(obj, p), dict)]
    path = rng.choice(keyed)
    del _parent(obj, path)[path[-1]]
    return obj


def json_wrong_type(obj: Any, rng: random.Random) -> Any:
    """A value replaced by the same value in another JSON type (number <-> string, list)."""
    path = rng.choice(_paths(obj))
    parent = _parent(obj, path)
    v = parent[path[-1]]
    parent[path[-1]] = rng.choice([str(v), [v], {"value": v}])
    return obj


JSON_MUTATORS: dict[str, Callable[[Any, random.Random], Any]] = {
    "json-set-value": json_set_value, "json-delete-key": json_delete_key,
    "json-wrong-type": json_wrong_type,
}


def mutate_json_text(text: str, rng: random.Random) -> tuple[str, str]:
    """(mutation name, new text): a JSON-level mutation, or now and then a text-level one."""
    if rng.random() < 0.25:
        name = rng.choice(["truncate", "byte-flip", "delete-line", "swap-lines"])
        out = TEXT_MUTATORS[name](text, rng)
        return name, out.decode("utf-8", "replace") if isinstance(out, bytes) else out
    name = rng.choice(sorted(JSON_MUTATORS))
    obj = JSON_MUTATORS[name](json.loads(text), rng)
    return name, json.dumps(obj, indent=1)
