"""FLOP counting with fvcore, token-reduction operators included.

fvcore counts one multiply-add as one flop and skips operators it has no handle for. The
clustering and reconstruction layers spend their time in matmuls (counted by fvcore) plus a few
element-wise ops (softmax, exp, norms) that fvcore ignores everywhere, as it does inside attention,
so reduced and baseline models are counted alike.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

__all__ = ["count_flops"]


def count_flops(module: nn.Module, *inputs, submodules: Iterable[str] = ()) -> Dict[str, float]:
    """Returns {"total": flops, <submodule name>: flops, ...} for one forward of ``module``.

    Submodule entries cover the direct children and the named ``submodules`` (full names, e.g.
    the token-reduction layers found by :func:`expedite_vit.runtime.models.token_reduction_modules`).
    """
    wanted = set(submodules)
    with torch.no_grad():
        analysis = FlopCountAnalysis(module, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_module = analysis.by_module()
    result = {"total": float(analysis.total())}
    for name, flops in by_module.items():
        if name and ("." not in name or name in wanted):
            result[name] = float(flops)
    return result
