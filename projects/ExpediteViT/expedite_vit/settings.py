"""The ``expedite`` node of a LazyConfig model, with every method's settings spelt out.

Every method's settings node is present (at its defaults unless given), so each field can be
overridden from the command line and the override key is checked against the settings that
exist: ``model.backbone.net.expedite.method=tome model.backbone.net.expedite.tome.r=12``.
"""
from typing import Mapping, Optional

from detectron2.config import LazyCall as L

from expedite import METHODS, ExpediteConfig

__all__ = ["expedite_node"]


def expedite_node(
    *,
    enabled: bool = True,
    method: str = "expedit",
    location: int = 8,
    expedit: Optional[Mapping] = None,
    ailurus: Optional[Mapping] = None,
    tome: Optional[Mapping] = None,
    itpn: Optional[Mapping] = None,
):
    """``L(ExpediteConfig)(...)`` with a ``L(<Method>Settings)(...)`` node per method; each
    mapping gives that method's fields (the others keep their defaults)."""
    given = {"expedit": expedit, "ailurus": ailurus, "tome": tome, "itpn": itpn}
    return L(ExpediteConfig)(
        enabled=enabled,
        method=method,
        location=location,
        **{name: L(settings)(**dict(given[name] or {})) for name, settings in METHODS.items()},
    )
