"""Checkpoint loading that refuses a checkpoint which does not fit the model.

detectron2's DetectionCheckpointer only logs missing, unexpected and mis-shaped keys, which turns
a checkpoint of another model into a silently wrong evaluation. Token reduction adds no
parameters, so an official checkpoint must fit exactly; anything else is an error that lists the
keys.
"""
from __future__ import annotations

from typing import List

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["CheckpointMismatchError", "StrictDetectionCheckpointer", "load_checkpoint"]

_LISTED = 20  # keys shown per kind of mismatch


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes differ from the model's."""


def _listing(title: str, keys: List[str]) -> str:
    shown = "\n".join(f"    {k}" for k in keys[:_LISTED])
    more = f"\n    ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return f"  {title} ({len(keys)}):\n{shown}{more}"


class StrictDetectionCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer whose model loading raises :class:`CheckpointMismatchError` when
    keys are missing, unexpected, or of the wrong shape. Reads every format detectron2 reads
    (model-zoo ``.pkl``, ``.pth``, ``detectron2://`` and URLs)."""

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = []
        if incompatible.missing_keys:
            problems.append(_listing("missing in the checkpoint", sorted(incompatible.missing_keys)))
        if incompatible.unexpected_keys:
            problems.append(_listing("not in the model", sorted(incompatible.unexpected_keys)))
        if incompatible.incorrect_shapes:
            shapes = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]
            problems.append(_listing("of a different shape", shapes))
        if problems:
            raise CheckpointMismatchError(
                "the checkpoint does not fit this model (is it from another model or config?):\n"
                + "\n".join(problems)
            )
        return incompatible


def load_checkpoint(model: nn.Module, path: str, strict: bool = True) -> None:
    """Load ``path`` (file, URL or ``detectron2://`` name) into ``model``.

    ``strict`` (for evaluation) raises on any key or shape mismatch; training from a partial
    checkpoint (e.g. ImageNet-pretrained backbone weights) passes ``strict=False``. An empty
    path leaves the model as initialised.
    """
    checkpointer_class = StrictDetectionCheckpointer if strict and path else DetectionCheckpointer
    checkpointer_class(model).load(path)
