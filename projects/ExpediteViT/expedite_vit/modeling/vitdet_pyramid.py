"""ViTDet's backbone (plain ViT + simple feature pyramid) as a Mask2Former backbone.

Mask2Former's pixel decoder is configured with ResNet-style level names, ``res2``..``res5`` at
strides 4..32, while detectron2's :class:`~detectron2.modeling.SimpleFeaturePyramid` names its
levels ``p2``..``p5``. :class:`Mask2FormerSimpleFeaturePyramid` is that pyramid with the levels
renamed ``p{k}`` -> ``res{k}`` (both mean stride 2**k), so ViTDet plugs into the Mask2Former head
unchanged. Parameter names are SimpleFeaturePyramid's (``net.*``, ``simfp_{k}.*``), so ViTDet
checkpoints keep loading, and the token reduction settings sit where they do for ViTDet:
``model.backbone.net.expedite`` with ``net`` an :class:`~expedite_vit.modeling.ExpeditedViT`.

Example: patch 16 and ``scale_factors=(4.0, 2.0, 1.0, 0.5)`` give res2..res5::

    model.backbone = L(Mask2FormerSimpleFeaturePyramid)(
        net=L(ExpeditedViT)(..., patch_size=16, expedite=L(ExpediteConfig)(...)),
        in_feature="last_feat", out_channels=256, scale_factors=(4.0, 2.0, 1.0, 0.5),
    )
"""

import re

from detectron2.modeling import SimpleFeaturePyramid

__all__ = ["Mask2FormerSimpleFeaturePyramid"]

_PYRAMID_LEVEL = re.compile(r"p(\d+)")


class Mask2FormerSimpleFeaturePyramid(SimpleFeaturePyramid):
    """:class:`~detectron2.modeling.SimpleFeaturePyramid` whose outputs are named ``res{k}``.

    Takes SimpleFeaturePyramid's arguments except ``top_block``: Mask2Former reads one level per
    scale factor and no extra coarser level.
    """

    def __init__(self, **pyramid_kwargs):
        if pyramid_kwargs.get("top_block") is not None:
            raise ValueError(
                "Mask2FormerSimpleFeaturePyramid takes no top_block: give one scale factor per "
                "level Mask2Former reads, e.g. (4.0, 2.0, 1.0, 0.5) for res2..res5 at patch 16"
            )
        super().__init__(**pyramid_kwargs)
        # SimpleFeaturePyramid.forward pairs its results with self._out_features in order, so
        # renaming these three attributes renames the outputs and output_shape() alike.
        renamed = {name: _PYRAMID_LEVEL.sub(r"res\1", name) for name in self._out_features}
        self._out_features = [renamed[name] for name in self._out_features]
        self._out_feature_strides = {
            renamed[name]: stride for name, stride in self._out_feature_strides.items()
        }
        self._out_feature_channels = {
            renamed[name]: channels for name, channels in self._out_feature_channels.items()
        }

    @property
    def size_divisibility(self) -> int:
        # The coarsest level's stride: inputs that are multiples of it keep every level aligned.
        return self._size_divisibility
