"""Host-agnostic token reduction for dense-prediction Vision Transformers (pure PyTorch).

The methods (Expedit, AiluRus, ToMe) are small functional cores (``clustering``/``windows``,
``ailurus``, ``tome``) over one representation of reduced tokens (a smaller regular map, or an
irregular :class:`TokenSet`); :class:`TokenReduction` runs the method that ``ExpediteConfig.method``
names on a host's blocks.
"""
from .clustering import ClusterContext, cluster_tokens, reconstruct_tokens
from .config import (
    IMPLEMENTATIONS,
    METHODS,
    NORMALIZATIONS,
    AiluRusSettings,
    ExpeditSettings,
    ExpediteConfig,
    HostLayout,
    ToMeSettings,
)
from .layers import (
    BipartiteMerging,
    DensityPeakMerging,
    ExpediteHost,
    ReducedMap,
    TokenClusteringLayer,
    TokenReconstructionLayer,
    TokenReducer,
    TokenReduction,
    TokenRestorer,
    TokenUnmerging,
)
from .tokens import TokenBlock, TokenSet, merge_tokens, run_token_block, tokens_from_map, tokens_to_map
from .windows import WindowClusterState, cluster_windows, reconstruct_windows, reduced_length

__all__ = [
    "AiluRusSettings",
    "BipartiteMerging",
    "ClusterContext",
    "DensityPeakMerging",
    "ExpeditSettings",
    "ExpediteConfig",
    "ExpediteHost",
    "HostLayout",
    "IMPLEMENTATIONS",
    "METHODS",
    "NORMALIZATIONS",
    "ReducedMap",
    "ToMeSettings",
    "TokenBlock",
    "TokenClusteringLayer",
    "TokenReconstructionLayer",
    "TokenReducer",
    "TokenReduction",
    "TokenRestorer",
    "TokenSet",
    "TokenUnmerging",
    "WindowClusterState",
    "cluster_tokens",
    "cluster_windows",
    "merge_tokens",
    "reconstruct_tokens",
    "reconstruct_windows",
    "reduced_length",
    "run_token_block",
    "tokens_from_map",
    "tokens_to_map",
]
