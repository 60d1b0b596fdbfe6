"""BatchNorm / Scale / Bias chains folded into the Convolution before them (the ``fold`` flag)."""
from __future__ import annotations

import torch
from torch import fx, nn

from landmarknet.layers.conv import CaffeConvolution
from landmarknet.layers.norm import CaffeBatchNorm, CaffeBias, CaffeScale

def _batchnorm_affine(bn: CaffeBatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) in float64 with ``bn(x) = a * x + c`` per channel (global statistics)."""
    s = bn.scale_factor.detach().double()
    factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
    mean = bn.mean.detach().double() * factor
    var = bn.variance.detach().double() * factor
    a = 1.0 / torch.sqrt(var + bn.eps)
    return a, -mean * a


def _foldable(gm: fx.GraphModule, node: fx.Node, channels: int) -> tuple[str, nn.Module] | None:
    """('bn'|'scale'|'bias', module) when ``node`` is a per-channel affine layer of one bottom
    that can be folded into a convolution of ``channels`` outputs; else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    mod = gm.get_submodule(node.target)
    if isinstance(mod, CaffeBatchNorm):
        use_global = mod.use_global_stats
        if use_global is False or (use_global is None and mod.training):
            return None  # batch statistics: not an affine map of x
        return ("bn", mod) if mod.channels == channels else None
    if isinstance(mod, CaffeScale):
        if mod.weight is None or mod.axis != 1 or tuple(mod.weight.shape) != (channels,):
            return None
        if mod.bias is not None and tuple(mod.bias.shape) != (channels,):
            return None
        return "scale", mod
    if isinstance(mod, CaffeBias):
        if mod.bias is None or mod.axis != 1 or tuple(mod.bias.shape) != (channels,):
            return None
        return "bias", mod
    return None


def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold BatchNorm / Scale / Bias chains into the Convolution before them, IN PLACE.

    A chain is folded when each layer is the only user of the one before it (so no other
    layer, and no net output, sees the convolution's raw output). The folded convolution gets
    new Parameter objects (weights shared with other layers through ``param { name }`` stay
    untouched). Returns the names of the folded-away modules.
    """
    folded: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1:
            continue
        conv = gm.get_submodule(node.target)
        if not isinstance(conv, CaffeConvolution):
            continue
        k = conv.weight.shape[0]
        chain: list[tuple[fx.Node, str, nn.Module]] = []
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if nxt.args[:1] != (cur,):
                break
            hit = _foldable(gm, nxt, k)
            if hit is None:
                break
            chain.append((nxt, *hit))
            cur = nxt
        if not chain:
            continue
        a = torch.ones(k, dtype=torch.float64, device=conv.weight.device)
        c = torch.zeros_like(a)
        for _, kind, mod in chain:  # y = a*x + c, then the next layer on y
            if kind == "bn":
                a2, c2 = _batchnorm_affine(mod)
            elif kind == "scale":
                a2 = mod.weight.detach().double()
                c2 = mod.bias.detach().double() if mod.bias is not None else torch.zeros_like(a)
            else:
                a2, c2 = torch.ones_like(a), mod.bias.detach().double()
            a, c = a * a2, c * a2 + c2
        w = conv.weight.detach().double() * a.view(-1, 1, 1, 1)
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(a)
        dtype = conv.weight.dtype
        conv.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        conv.bias = nn.Parameter((b * a + c).to(dtype), requires_grad=False)
        last = chain[-1][0]
        last.replace_all_uses_with(node)
        for n, _, _ in reversed(chain):
            gm.graph.erase_node(n)
            folded.append(str(n.target))
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded
