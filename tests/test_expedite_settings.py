"""ExpediteConfig: strict field checks (at construction and at every assignment), one-line
errors, and the host check every host shares."""
import math

import pytest
from omegaconf import OmegaConf

from conftest import expedit_config, set_expedit
from expedite import ExpediteConfig, ExpeditSettings, HostLayout


def one_line_error(call, *args, **kwargs):
    with pytest.raises(ValueError) as err:
        call(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text
    return text


# (field, refused value, text the message must hold). Several values are what OmegaConf makes of
# a command-line override: enabled=no -> "no", grid=4.0 -> 4.0, location=true -> True. The
# common fields are ExpediteConfig's own (expedite.<field>), the others Expedit's settings
# (expedite.expedit.<field>).
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
    ("grid", 4.0, "expedite.expedit.grid=4.0 (float)"),
    ("grid", 0, "expedite.expedit.grid=0 (int)"),
    ("grid", (7, 0), "expedite.expedit.grid=(7, 0) (tuple)"),
    ("grid", (7, 7, 7), "expedite.expedit.grid=(7, 7, 7) (tuple)"),
    ("grid", "7", "expedite.expedit.grid='7' (str)"),
    ("grid", True, "expedite.expedit.grid=True (bool)"),
    ("n_iters", -1, "expedite.expedit.n_iters=-1 (int)"),
    ("n_iters", 2.5, "expedite.expedit.n_iters=2.5 (float)"),
    ("cluster_temperature", 0.0, "expedite.expedit.cluster_temperature=0.0 (float)"),
    ("cluster_temperature", -0.01, "expedite.expedit.cluster_temperature=-0.01 (float)"),
    ("cluster_temperature", float("inf"), "expedite.expedit.cluster_temperature=inf (float)"),
    ("cluster_temperature", float("nan"), "expedite.expedit.cluster_temperature=nan (float)"),
    ("cluster_temperature", "abc", "expedite.expedit.cluster_temperature='abc' (str)"),
    ("cluster_temperature", True, "expedite.expedit.cluster_temperature=True (bool)"),
    ("reconstruct_temperature", float("-inf"), "expedite.expedit.reconstruct_temperature=-inf (float)"),
    ("reconstruct_temperature", "0.01", "expedite.expedit.reconstruct_temperature='0.01' (str)"),
    ("locality_window", 4, "expedite.expedit.locality_window=4 (int)"),
    ("locality_window", 0, "expedite.expedit.locality_window=0 (int)"),
    ("locality_window", 5.0, "expedite.expedit.locality_window=5.0 (float)"),
    ("k", 0, "expedite.expedit.k=0 (int)"),
    ("k", False, "expedite.expedit.k=False (bool)"),
    ("normalize", "max", "expedite.expedit.normalize='max' (str)"),
    ("normalize", "L2", "expedite.expedit.normalize='L2' (str)"),
    ("implementation", "upstream", "expedite.expedit.implementation='upstream' (str)"),
    ("implementation", True, "expedite.expedit.implementation=True (bool)"),
]


@pytest.mark.parametrize("field, value, text", REFUSED, ids=[f"{f}={v!r}" for f, v, _ in REFUSED])
def test_construction_refuses(field, value, text):
    message = one_line_error(expedit_config, **{field: value})
    assert message.startswith(text + " is not allowed: ")
    if text.startswith("expedite.expedit."):  # the settings object on its own says the same
        assert one_line_error(ExpeditSettings, **{field: value}) == message


@pytest.mark.parametrize("field, value, text", REFUSED, ids=[f"{f}={v!r}" for f, v, _ in REFUSED])
def test_assignment_refuses_and_keeps_the_old_value(field, value, text):
    config = ExpediteConfig()
    owner = config.expedit if text.startswith("expedite.expedit.") else config
    before = getattr(owner, field)
    message = one_line_error(set_expedit, config, field, value)
    assert message.startswith(text)
    assert getattr(owner, field) == before


def test_error_says_what_is_allowed():
    assert one_line_error(ExpediteConfig, enabled="no") == (
        "expedite.enabled='no' (str) is not allowed: it must be True or False "
        "(a bool; strings such as 'no' or 'true' are refused)"
    )
    assert "one of 'default', 'official'" in one_line_error(ExpediteConfig, expedit=dict(implementation="x"))
    assert "one of 'sum', 'l2'" in one_line_error(ExpediteConfig, expedit=dict(normalize="x"))
    assert "finite number > 0" in one_line_error(
        ExpediteConfig, expedit=dict(k=3, reconstruct_temperature=math.inf)
    )


def test_accepted_values_are_normalised():
    config = ExpediteConfig(expedit=dict(grid=8, cluster_temperature=1, reconstruct_temperature=1e30)).expedit
    assert config.grid == (8, 8)
    assert type(config.cluster_temperature) is float and config.cluster_temperature == 1.0
    assert ExpediteConfig(expedit=dict(grid=[6, 4])).expedit.grid == (6, 4)
    assert ExpediteConfig(expedit=dict(grid=OmegaConf.create([5, 5]))).expedit.grid == (5, 5)  # from a YAML list
    config.grid = 4  # an int on a built config becomes a pair too
    assert config.grid == (4, 4) and config.num_clusters == 16
    assert ExpediteConfig().expedit.implementation == "default" and ExpediteConfig().expedit.normalize == "sum"


def test_unknown_attribute_is_refused():
    config = ExpediteConfig()
    with pytest.raises(AttributeError, match=r"expedite\.gird is not a setting"):
        config.gird = 8
    # An Expedit field set where it used to live names where it lives now.
    hint = r"^expedite\.grid is not a setting \(expedit's is expedite\.expedit\.grid\)"
    with pytest.raises(AttributeError, match=hint):
        config.grid = 8


def test_config_node_from_overrides_is_checked_field_by_field():
    """What the config loader does: it instantiates the ``expedite`` node (``expedite_node``: an
    ExpediteConfig node with one settings node per method) that detectron2's override parsing
    built."""
    from detectron2.config import LazyConfig, instantiate
    from expedite_vit.settings import expedite_node

    cfg = OmegaConf.create({"expedite": expedite_node(enabled=True, expedit=dict(grid=7))})
    LazyConfig.apply_overrides(cfg, ["expedite.enabled=no"])
    assert cfg.expedite.enabled == "no"  # how the override reads
    assert one_line_error(instantiate, cfg.expedite).startswith("expedite.enabled='no' (str)")
    LazyConfig.apply_overrides(cfg, ["expedite.enabled=True", "expedite.expedit.grid=4.0"])
    assert one_line_error(instantiate, cfg.expedite).startswith("expedite.expedit.grid=4.0 (float)")
    LazyConfig.apply_overrides(cfg, ["expedite.expedit.grid=[8,8]", "expedite.expedit.implementation=official"])
    built = instantiate(cfg.expedite)
    assert built.expedit.grid == (8, 8) and built.expedit.implementation == "official"


def test_copies_keep_the_checks():
    import copy
    import pickle

    original = ExpediteConfig(expedit=dict(grid=4))
    for clone in (copy.deepcopy(original), pickle.loads(pickle.dumps(original))):
        assert clone == ExpediteConfig(expedit=dict(grid=4))
        with pytest.raises(ValueError, match=r"expedite\.expedit\.grid"):
            clone.expedit.grid = 2.0
        with pytest.raises(ValueError, match=r"expedite\.location"):
            clone.location = 2.0


# --- The host check ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, text",
    [
        (dict(location=12), "expedite.location=12 is past the last ViT block: location must lie in [0, 11]"),
        (dict(grid=15, k=1), "expedite.expedit.grid=(15, 15): grid 15x15 is larger than the 14x14 ViT window"),
        (dict(grid=(7, 5), k=1), "expedite.expedit.grid=(7, 5): grid 7x5 must be square"),
        (dict(grid=7, k=50), "expedite.expedit.k=50 is above the cluster count 49 (7x7 per window); allowed: 1 to 49"),
    ],
)
def test_host_check(settings, text):
    config = expedit_config(**settings)
    layout = HostLayout(name="ViT", num_blocks=12, window=14)
    assert one_line_error(config.check_host, layout).startswith(text)


def test_host_check_skips_a_disabled_config_and_names_windowless_hosts():
    expedit_config(enabled=False, location=99, grid=20).check_host(HostLayout(name="ViT", num_blocks=12, window=14))
    text = one_line_error(ExpediteConfig().check_host, HostLayout(name="ViT", num_blocks=12, window=0))
    assert text.startswith("expedite.method='expedit': this ViT has no windowed attention")


def test_hosts_check_settings_from_their_arguments_without_building():
    """What the config loader calls before anything is built: the host class's static
    ``host_layout`` with the host node's arguments (missing ones take the constructor's
    defaults), then the settings' check against that layout."""
    from expedite_vit.modeling import ExpeditedViT
    from expedite_vit.modeling.swin import D2SwinTransformer

    vit = ExpeditedViT.host_layout(depth=4, window_size=4, embed_dim=64, num_heads=4)
    assert (vit.name, vit.num_blocks, vit.window) == ("ViT", 4, 4)
    expedit_config(location=3, grid=2, k=4).check_host(vit)
    text = one_line_error(expedit_config(location=4, grid=2, k=1).check_host, vit)
    assert text.startswith("expedite.location=4 is past the last ViT block")
    assert "no windowed attention" in one_line_error(ExpediteConfig().check_host, ExpeditedViT.host_layout())

    swin = D2SwinTransformer.host_layout(depths=(2, 2, 18, 2), window_size=12, embed_dim=192)
    assert (swin.name, swin.num_blocks, swin.window) == ("Swin", 24, 12)
    assert "blocks 0..1, 2..3, 4..21, 22..23" in swin.description  # location 10: stage 2, block 6
    expedit_config(location=10, grid=8, k=10).check_host(swin)
    expedit_config(enabled=False, grid=20).check_host(swin)  # off: not checked
    text = one_line_error(expedit_config(grid=13, k=1).check_host, swin)
    assert text.startswith("expedite.expedit.grid=(13, 13): grid 13x13 is larger than the 12x12 Swin window")
