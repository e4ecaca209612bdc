"""The baseline and the expedited model from one LazyConfig, with the same weights.

The config's ``expedite`` nodes (e.g. ``model.backbone.net.expedite``) describe the expedited
model as given, command-line overrides included; the baseline is the same config with every
``expedite`` node disabled. Token reduction has no parameters, so one checkpoint serves both.
"""
from __future__ import annotations

import copy
import logging
from typing import Dict, Mapping, Optional, Tuple

from detectron2.config import instantiate
from omegaconf import DictConfig
from torch import nn

from expedite import TokenReducer, TokenRestorer

from .checkpoint import load_checkpoint, read_checkpoint
from .config import ConfigError, expedite_nodes

__all__ = [
    "OutputRecorder",
    "TOKEN_REDUCTION_LAYERS",
    "backbone_modules",
    "build_model",
    "build_model_pair",
    "checkpoint_path",
    "expedite_nodes",
    "token_reduction_modules",
    "with_expedite_disabled",
]

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "\n" + "!" * 88 + "\n"
    "!! train.init_checkpoint is empty: the models have RANDOM WEIGHTS.\n"
    "!! Speed and FLOPs are still meaningful; accuracy and agreement numbers are not.\n"
    "!! Pass train.init_checkpoint=PATH (a trained model_final.pth or .pkl) for real predictions.\n"
    + "!" * 88
)


def with_expedite_disabled(model_cfg: DictConfig) -> DictConfig:
    """A copy of ``model_cfg`` with token reduction off everywhere: the host model."""
    baseline = copy.deepcopy(model_cfg)
    nodes = expedite_nodes(baseline)
    if not nodes:
        raise ConfigError(
            "the config's model has no 'expedite' node (e.g. model.backbone.net.expedite): "
            "there is no expedited model to compare with the baseline"
        )
    for _, node in nodes:
        node.enabled = False
    return baseline


def checkpoint_path(cfg: DictConfig) -> str:
    """``train.init_checkpoint``, or "" when the config names none."""
    return (cfg.get("train") or {}).get("init_checkpoint", "") or ""


def build_model(cfg: DictConfig, device: str, model_cfg: Optional[DictConfig] = None) -> nn.Module:
    """``model_cfg`` (default ``cfg.model``) in eval mode on ``device``, with the weights of
    ``train.init_checkpoint`` loaded strictly; loudly random when there is no checkpoint."""
    path = checkpoint_path(cfg)
    # Read first: a missing or broken file is named before minutes go into building the model.
    checkpoint = read_checkpoint(path) if path else None
    model = instantiate(model_cfg if model_cfg is not None else cfg.model).to(device).eval()
    if path:
        load_checkpoint(model, path, strict=True, preloaded=checkpoint)
    else:
        logger.warning(RANDOM_WEIGHTS_WARNING)
    return model


def build_model_pair(cfg: DictConfig, device: str) -> Tuple[nn.Module, nn.Module]:
    """(baseline, expedited): the config's model with token reduction off, and as configured.

    The expedited model takes the baseline's parameter tensors themselves (``assign=True``), so
    both run on the same weights and the weights are held in memory once.
    """
    baseline = build_model(cfg, device, with_expedite_disabled(cfg.model))
    if not any(node.get("enabled", True) for _, node in expedite_nodes(cfg.model)):
        logger.warning("token reduction is disabled in the config: the expedited model is the baseline")
    expedited = instantiate(cfg.model).to(device).eval()
    expedited.load_state_dict(baseline.state_dict(), strict=True, assign=True)
    return baseline, expedited


def backbone_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """The model's transformer backbone as "backbone" and, when it sits inside a feature pyramid
    (ViTDet's SimpleFeaturePyramid keeps the ViT as ``net``), the pyramid as "backbone_with_pyramid"."""
    if not hasattr(model, "backbone"):
        raise TypeError(f"{type(model).__name__} has no 'backbone' submodule to benchmark")
    pyramid = model.backbone
    net = getattr(pyramid, "net", None)
    if isinstance(net, nn.Module):
        return {"backbone": net, "backbone_with_pyramid": pyramid}
    return {"backbone": pyramid}


# The token-reduction layers by what they do, as tools name them in their reports: every
# method's reducing modules (Expedit's clustering, AiluRus's and ToMe's merging) and restoring
# modules (Expedit's reconstruction, unmerging).
TOKEN_REDUCTION_LAYERS = {"reduce": TokenReducer, "restore": TokenRestorer}


def token_reduction_modules(module: nn.Module, kind: str) -> Dict[str, nn.Module]:
    """The token-reduction layers of type ``TOKEN_REDUCTION_LAYERS[kind]`` in ``module`` whose
    settings have reduction on (a host keeps its layers when it is off), by full name."""
    layer_type = TOKEN_REDUCTION_LAYERS[kind]
    return {
        name: m for name, m in module.named_modules() if isinstance(m, layer_type) and m.config.enabled
    }


class OutputRecorder:
    """Keeps the latest output, and first input, of each named module, by forward hooks."""

    def __init__(self, modules: Mapping[str, nn.Module]):
        self.modules = dict(modules)
        self.outputs: Dict[str, object] = {}
        self.inputs: Dict[str, object] = {}
        self._handles = []

    def _hook(self, name: str):
        def hook(module, args, output):
            self.outputs[name] = output
            self.inputs[name] = args[0] if args else None

        return hook

    def __enter__(self) -> "OutputRecorder":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

