"""Load-time renames of state-dict keys that older official Mask2Former checkpoints still carry.

Upstream's modules rename these in ``_load_from_state_dict`` when a checkpoint predates them
(``_version`` < 2). Ours do the same from their own ``_load_from_state_dict``, so every way of
loading gets it (detectron2's checkpointer, our strict one, plain ``load_state_dict``), but
only where the new key is absent and the model has it: a checkpoint with both names, or with
a key that fits nowhere, still fails strict loading with the keys listed.

- ``MultiScaleMaskedTransformerDecoder``: ``static_query`` -> ``query_feat`` (the learned query
  features; e.g. COCO instance Swin-T ``model_final_86143f.pkl``). Upstream's video decoder
  has the same and no other.
- ``MaskFormerHead``: ``sem_seg_head.X`` -> ``sem_seg_head.pixel_decoder.X`` for keys outside
  ``predictor`` (MaskFormer-era heads kept the pixel decoder's weights directly in the head).
"""

import logging
from typing import Callable, Collection, Dict, List, Optional

import torch

__all__ = ["rename_legacy_keys"]

logger = logging.getLogger(__name__)


def rename_legacy_keys(
    state_dict: Dict[str, torch.Tensor],
    prefix: str,
    new_name: Callable[[str], Optional[str]],
    model_keys: Collection[str],
    owner: str,
) -> List[str]:
    """
    Rename, in place, the keys of ``state_dict`` under ``prefix`` that ``new_name`` maps to a
    key of the model, unless the checkpoint has that key already. One warning per call lists
    what was renamed.

    Args:
        state_dict: the dict passed to ``_load_from_state_dict`` (full keys, with ``prefix``).
        prefix: the module's prefix, e.g. ``"sem_seg_head.predictor."``.
        new_name: key relative to the module -> its current name, or None to leave it.
        model_keys: the module's own state-dict keys, relative to it.
        owner: class name for the message.

    Returns:
        the renamed keys, as "old -> new".
    """
    renamed = []
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = new_name(key[len(prefix):])
        if new is None or new not in model_keys or prefix + new in state_dict:
            continue
        state_dict[prefix + new] = state_dict.pop(key)
        renamed.append(f"{key} -> {prefix + new}")
    if renamed:
        logger.warning(
            f"{owner}: the checkpoint uses old key names (as upstream Mask2Former, renaming them "
            f"on load): {', '.join(renamed)}"
        )
    return renamed
