"""Host-agnostic token reduction for dense-prediction Vision Transformers (pure PyTorch).

The methods (Expedit, AiluRus, ToMe, Fast-iTPN) are small functional cores (``clustering``/``windows``,
``ailurus``, ``tome``, ``migration`` and ``gathering``) over one representation of reduced tokens (a smaller regular map, or an
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
    InputSizeError,
    ITPNSettings,
    ToMeSettings,
)
from .layers import (
    BipartiteMerging,
    DensityPeakMerging,
    ExpediteHost,
    ReducedMap,
    TokenClusteringLayer,
    TokenMigration,
    TokenReconstructionLayer,
    TokenReducer,
    TokenReduction,
    TokenRestorer,
    TokenUnmerging,
)
from .tokens import (
    TokenBlock,
    TokenSet,
    gathered_map_attention,
    keep_tokens,
    merge_tokens,
    run_token_block,
    tokens_from_map,
    tokens_to_map,
)
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
    "InputSizeError",
    "IMPLEMENTATIONS",
    "ITPNSettings",
    "METHODS",
    "NORMALIZATIONS",
    "ReducedMap",
    "ToMeSettings",
    "TokenBlock",
    "TokenClusteringLayer",
    "TokenMigration",
    "TokenReconstructionLayer",
    "TokenReducer",
    "TokenReduction",
    "TokenRestorer",
    "TokenSet",
    "TokenUnmerging",
    "WindowClusterState",
    "cluster_tokens",
    "cluster_windows",
    "gathered_map_attention",
    "keep_tokens",
    "merge_tokens",
    "reconstruct_tokens",
    "reconstruct_windows",
    "reduced_length",
    "run_token_block",
    "tokens_from_map",
    "tokens_to_map",
]
