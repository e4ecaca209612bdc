"""Host-agnostic token reduction for dense-prediction Vision Transformers (pure PyTorch)."""
from .clustering import ClusterContext, cluster_tokens, reconstruct_tokens
from .config import IMPLEMENTATIONS, NORMALIZATIONS, ExpediteConfig
from .layers import ExpediteHost, TokenClusteringLayer, TokenReconstructionLayer
from .windows import WindowClusterState, cluster_windows, reconstruct_windows, reduced_length

__all__ = [
    "ClusterContext",
    "ExpediteConfig",
    "ExpediteHost",
    "IMPLEMENTATIONS",
    "NORMALIZATIONS",
    "TokenClusteringLayer",
    "TokenReconstructionLayer",
    "WindowClusterState",
    "cluster_tokens",
    "cluster_windows",
    "reconstruct_tokens",
    "reconstruct_windows",
    "reduced_length",
]
