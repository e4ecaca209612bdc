"""ExpediteConfig: strict field checks (at construction and at every assignment), one-line
errors, and the host check every host shares."""
import math

import pytest
from omegaconf import OmegaConf

from expedite import ExpediteConfig


def one_line_error(call, *args, **kwargs):
    with pytest.raises(ValueError) as err:
        call(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text
    return text


# (field, refused value, text the message must hold). Several values are what OmegaConf makes of
# a command-line override: enabled=no -> "no", grid=4.0 -> 4.0, location=true -> True.
REFUSED = [
    ("enabled", "no", "expedite.enabled='no' (str)"),
    ("enabled", "off", "expedite.enabled='off' (str)"),
    ("enabled", "true", "expedite.enabled='true' (str)"),
    ("enabled", 1, "expedite.enabled=1 (int)"),
    ("enabled", None, "expedite.enabled=None (NoneType)"),
    ("location", True, "expedite.location=True (bool)"),
    ("location", 8.0, "expedite.location=8.0 (float)"),
    ("location", -1, "expedite.location=-1 (int)"),
    ("location", "8", "expedite.location='8' (str)"),
    ("grid", 4.0, "expedite.grid=4.0 (float)"),
    ("grid", 0, "expedite.grid=0 (int)"),
    ("grid", (7, 0), "expedite.grid=(7, 0) (tuple)"),
    ("grid", (7, 7, 7), "expedite.grid=(7, 7, 7) (tuple)"),
    ("grid", "7", "expedite.grid='7' (str)"),
    ("grid", True, "expedite.grid=True (bool)"),
    ("n_iters", -1, "expedite.n_iters=-1 (int)"),
    ("n_iters", 2.5, "expedite.n_iters=2.5 (float)"),
    ("cluster_temperature", 0.0, "expedite.cluster_temperature=0.0 (float)"),
    ("cluster_temperature", -0.01, "expedite.cluster_temperature=-0.01 (float)"),
    ("cluster_temperature", float("inf"), "expedite.cluster_temperature=inf (float)"),
    ("cluster_temperature", float("nan"), "expedite.cluster_temperature=nan (float)"),
    ("cluster_temperature", "abc", "expedite.cluster_temperature='abc' (str)"),
    ("cluster_temperature", True, "expedite.cluster_temperature=True (bool)"),
    ("reconstruct_temperature", float("-inf"), "expedite.reconstruct_temperature=-inf (float)"),
    ("reconstruct_temperature", "0.01", "expedite.reconstruct_temperature='0.01' (str)"),
    ("locality_window", 4, "expedite.locality_window=4 (int)"),
    ("locality_window", 0, "expedite.locality_window=0 (int)"),
    ("locality_window", 5.0, "expedite.locality_window=5.0 (float)"),
    ("k", 0, "expedite.k=0 (int)"),
    ("k", False, "expedite.k=False (bool)"),
    ("normalize", "max", "expedite.normalize='max' (str)"),
    ("normalize", "L2", "expedite.normalize='L2' (str)"),
    ("implementation", "upstream", "expedite.implementation='upstream' (str)"),
    ("implementation", True, "expedite.implementation=True (bool)"),
]


@pytest.mark.parametrize("field, value, text", REFUSED, ids=[f"{f}={v!r}" for f, v, _ in REFUSED])
def test_construction_refuses(field, value, text):
    message = one_line_error(ExpediteConfig, **{field: value})
    assert message.startswith(text + " is not allowed: ")


@pytest.mark.parametrize("field, value, text", REFUSED, ids=[f"{f}={v!r}" for f, v, _ in REFUSED])
def test_assignment_refuses_and_keeps_the_old_value(field, value, text):
    config = ExpediteConfig()
    before = getattr(config, field)
    message = one_line_error(setattr, config, field, value)
    assert message.startswith(text)
    assert getattr(config, field) == before


def test_error_says_what_is_allowed():
    assert one_line_error(ExpediteConfig, enabled="no") == (
        "expedite.enabled='no' (str) is not allowed: it must be True or False "
        "(a bool; strings such as 'no' or 'true' are refused)"
    )
    assert "one of 'default', 'official'" in one_line_error(ExpediteConfig, implementation="x")
    assert "one of 'sum', 'l2'" in one_line_error(ExpediteConfig, normalize="x")
    assert "finite number > 0" in one_line_error(ExpediteConfig, k=3, reconstruct_temperature=math.inf)


def test_accepted_values_are_normalised():
    config = ExpediteConfig(grid=8, cluster_temperature=1, reconstruct_temperature=1e30)
    assert config.grid == (8, 8)
    assert type(config.cluster_temperature) is float and config.cluster_temperature == 1.0
    assert ExpediteConfig(grid=[6, 4]).grid == (6, 4)
    assert ExpediteConfig(grid=OmegaConf.create([5, 5])).grid == (5, 5)  # from a YAML list
    config.grid = 4  # an int on a built config becomes a pair too
    assert config.grid == (4, 4) and config.num_clusters == 16
    assert ExpediteConfig().implementation == "default" and ExpediteConfig().normalize == "sum"


def test_unknown_attribute_is_refused():
    config = ExpediteConfig()
    with pytest.raises(AttributeError, match=r"expedite\.gird is not a setting"):
        config.gird = 8


def test_config_node_from_overrides_is_checked_field_by_field():
    """What the config loader does: ExpediteConfig(**node) on the node that detectron2's
    override parsing built."""
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig

    cfg = OmegaConf.create({"expedite": L(ExpediteConfig)(enabled=True, grid=7)})
    settings = lambda: {k: v for k, v in cfg.expedite.items() if k != "_target_"}  # noqa: E731
    LazyConfig.apply_overrides(cfg, ["expedite.enabled=no"])
    assert cfg.expedite.enabled == "no"  # how the override reads
    assert one_line_error(ExpediteConfig, **settings()).startswith("expedite.enabled='no' (str)")
    LazyConfig.apply_overrides(cfg, ["expedite.enabled=True", "expedite.grid=4.0"])
    assert one_line_error(ExpediteConfig, **settings()).startswith("expedite.grid=4.0 (float)")
    LazyConfig.apply_overrides(cfg, ["expedite.grid=[8,8]", "expedite.implementation=official"])
    assert ExpediteConfig(**settings()).grid == (8, 8)


def test_copies_keep_the_checks():
    import copy
    import pickle

    for clone in (copy.deepcopy(ExpediteConfig(grid=4)), pickle.loads(pickle.dumps(ExpediteConfig(grid=4)))):
        assert clone == ExpediteConfig(grid=4)
        with pytest.raises(ValueError, match="expedite.grid"):
            clone.grid = 2.0


# --- The host check ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, text",
    [
        (dict(location=12), "expedite.location=12 is past the last ViT block: location must lie in [0, 11]"),
        (dict(grid=15, k=1), "expedite.grid=(15, 15): grid 15x15 is larger than the 14x14 ViT window"),
        (dict(grid=(7, 5), k=1), "expedite.grid=(7, 5): grid 7x5 must be square"),
        (dict(grid=7, k=50), "expedite.k=50 is above the cluster count 49 (7x7 per window); allowed: 1 to 49"),
    ],
)
def test_host_check(settings, text):
    config = ExpediteConfig(**settings)
    assert one_line_error(config.check_host, num_blocks=12, window=14, host="ViT").startswith(text)


def test_host_check_skips_a_disabled_config_and_names_windowless_hosts():
    ExpediteConfig(enabled=False, location=99, grid=20).check_host(num_blocks=12, window=14)
    text = one_line_error(ExpediteConfig().check_host, num_blocks=12, window=0, host="ViT")
    assert text.startswith("expedite.enabled=True: this ViT has no windowed attention")


def test_hosts_check_settings_from_their_arguments_without_building():
    """What the config loader calls before anything is built: the host class's static check
    with the host node's arguments (missing ones take the constructor's defaults)."""
    from expedite_vit.modeling import ExpeditedViT
    from expedite_vit.modeling.swin import D2SwinTransformer

    vit = dict(depth=4, window_size=4, embed_dim=64, num_heads=4)
    ExpeditedViT.check_expedite_settings(ExpediteConfig(location=3, grid=2, k=4), **vit)
    text = one_line_error(ExpeditedViT.check_expedite_settings, ExpediteConfig(location=4, grid=2, k=1), **vit)
    assert text.startswith("expedite.location=4 is past the last ViT block")
    assert "no windowed attention" in one_line_error(ExpeditedViT.check_expedite_settings, ExpediteConfig())

    swin = dict(depths=(2, 2, 18, 2), window_size=12, embed_dim=192)
    assert D2SwinTransformer.check_expedite_settings(ExpediteConfig(location=10, grid=8, k=10), **swin) == (2, 6)
    assert D2SwinTransformer.check_expedite_settings(ExpediteConfig(enabled=False, grid=20), **swin) is None
    text = one_line_error(D2SwinTransformer.check_expedite_settings, ExpediteConfig(grid=13, k=1), **swin)
    assert text.startswith("expedite.grid=(13, 13): grid 13x13 is larger than the 12x12 Swin window")
