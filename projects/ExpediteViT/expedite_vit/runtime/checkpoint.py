"""Checkpoint loading that refuses a checkpoint which does not fit the model.

detectron2's DetectionCheckpointer only logs missing, unexpected and mis-shaped keys, which turns
a checkpoint of another model into a silently wrong evaluation. Token reduction adds no
parameters, so an official checkpoint must fit exactly; anything else is an error that lists the
keys. A file that cannot be read is an error naming the file and what is wrong with it, found by
:func:`read_checkpoint` before the model is built.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Dict, List, Optional

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "CheckpointFileError",
    "CheckpointMismatchError",
    "StrictDetectionCheckpointer",
    "load_checkpoint",
    "read_checkpoint",
]

_LISTED = 20  # keys shown per kind of mismatch


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes differ from the model's."""


class CheckpointFileError(ValueError):
    """A checkpoint file that is missing, unreadable or not a checkpoint; the message names it."""


def _why_unreadable(error: Exception) -> str:
    """What is wrong with a file torch or pickle could not read, in the user's terms. Never
    torch's advice to retry with ``weights_only=False``, which would run code from the file."""
    text = str(error)
    if isinstance(error, (zipfile.BadZipFile, EOFError)) or "zip archive" in text or "central directory" in text:
        return "it is truncated or corrupt (incomplete archive): download or export it again"
    if "Unsupported global" in text:
        name = text.split("GLOBAL ", 1)[-1].split(" ", 1)[0] if "GLOBAL " in text else "a Python object"
        return (
            f"it holds {name}, besides tensors and plain values; such objects are not loaded, as "
            f"that could run code from the file: save the weights alone (torch.save({{'model': state_dict}}))"
        )
    if isinstance(error, OSError):
        return error.strerror or text.splitlines()[0]
    detail = "" if isinstance(error, pickle.UnpicklingError) else f" ({type(error).__name__}: {text[:80]})"
    # Never torch's own message: it suggests weights_only=False, which runs code from the file.
    return "it is not a PyTorch or detectron2 checkpoint, or it is corrupt" + detail


class _CheckpointReader(DetectionCheckpointer):
    """Reads a checkpoint the way detectron2 does (``.pkl`` model-zoo files, ``.pth``, URL queries
    such as ``?matching_heuristics=True``) and keeps it, loading nothing into a model."""

    def __init__(self):
        super().__init__(nn.Module())
        self.checkpoint: Optional[Dict[str, Any]] = None

    def _load_file(self, filename):
        try:
            loaded = super()._load_file(filename)
        except Exception as error:  # torch, pickle and zip raise many kinds; all mean "unreadable"
            raise CheckpointFileError(f"cannot read checkpoint {filename!r}: {_why_unreadable(error)}") from None
        if not isinstance(loaded.get("model"), dict):
            raise CheckpointFileError(f"checkpoint {filename!r} holds no model weights (no 'model' dict)")
        self.checkpoint = dict(loaded)  # a copy: loading pops "model" from the dict it is given
        return loaded

    def _load_model(self, checkpoint):
        return None


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Read checkpoint ``path`` (file, URL or ``detectron2://`` name) without a model, so that a
    missing or broken file is reported before minutes are spent building one.

    Raises:
        CheckpointFileError: naming the file and what is wrong with it.
    """
    local = path.partition("?")[0]  # detectron2 reads options such as ?matching_heuristics=True
    if "://" not in path and not os.path.isfile(local):
        what = "is a folder, not a file" if os.path.isdir(local) else "does not exist"
        raise CheckpointFileError(f"checkpoint {path!r} (train.init_checkpoint) {what}")
    reader = _CheckpointReader()
    try:
        reader.load(path)
    except CheckpointFileError:
        raise
    except Exception as error:  # downloading: network and file-system errors of many kinds
        raise CheckpointFileError(f"cannot fetch checkpoint {path!r}: {_why_unreadable(error)}") from None
    return reader.checkpoint


def _listing(title: str, keys: List[str]) -> str:
    shown = "\n".join(f"    {k}" for k in keys[:_LISTED])
    more = f"\n    ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return f"  {title} ({len(keys)}):\n{shown}{more}"


class StrictDetectionCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer whose model loading raises :class:`CheckpointMismatchError` when
    keys are missing, unexpected, or of the wrong shape. Reads every format detectron2 reads
    (model-zoo ``.pkl``, ``.pth``, ``detectron2://`` and URLs).

    Args:
        preloaded: the checkpoint as :func:`read_checkpoint` returned it, used instead of reading
            the file a second time.
    """

    def __init__(self, model, save_dir="", *, preloaded: Optional[Dict[str, Any]] = None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self._preloaded = preloaded

    def _load_file(self, filename):
        return dict(self._preloaded) if self._preloaded is not None else super()._load_file(filename)

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


def load_checkpoint(
    model: nn.Module, path: str, strict: bool = True, preloaded: Optional[Dict[str, Any]] = None
) -> None:
    """Load ``path`` (file, URL or ``detectron2://`` name) into ``model``.

    ``strict`` (for evaluation) raises on any key or shape mismatch; training from a partial
    checkpoint (e.g. ImageNet-pretrained backbone weights) passes ``strict=False``. An empty
    path leaves the model as initialised. ``preloaded``: what :func:`read_checkpoint` returned
    for ``path``.
    """
    if strict and path:
        StrictDetectionCheckpointer(model, preloaded=preloaded).load(path)
    else:
        DetectionCheckpointer(model).load(path)
