"""Mask2Former heads: deformable attention, checkpoint layout, matching, training, inference."""

import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import Instances

from expedite_vit.runtime.checkpoint import CheckpointMismatchError, load_checkpoint
from expedite_vit.modeling.mask2former import (
    HungarianMatcher,
    MaskFormer,
    MSDeformAttn,
    MSDeformAttnPixelDecoder,
    MultiScaleMaskedTransformerDecoder,
    PositionEmbeddingSine,
    build_mask2former_criterion,
    build_mask2former_head,
    ms_deform_attn_core_pytorch,
)
from expedite_vit.modeling.mask2former import legacy_keys

FIXTURE = "mask2former_official.json"  # in the conftest's fixtures_dir
NAMES = ("res2", "res3", "res4", "res5")
STRIDES = (4, 8, 16, 32)


# ---------------------------------------------------------------------------------------------
# Deformable attention against explicit bilinear interpolation


def bilinear_zero_padded(image, x, y):
    """Value of image (H, W, D) at normalized (x, y), pixel centres at (i + 0.5) / size,
    neighbours outside the image count as zero."""
    h, w, _ = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    total = torch.zeros(image.shape[-1], dtype=image.dtype)
    for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * image[yy, xx]
    return total


def brute_force_deform_attn(value, shapes, locations, weights):
    """value (N, S, M, D), locations (N, Lq, M, L, P, 2), weights (N, Lq, M, L, P) -> (N, Lq, M*D)."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for level, (h, w) in enumerate(shapes):
                    image = value[b, starts[level] : starts[level + 1], head].reshape(h, w, d)
                    for k in range(p):
                        x, y = locations[b, q, head, level, k].tolist()
                        out[b, q, head] += weights[b, q, head, level, k] * bilinear_zero_padded(
                            image, x, y
                        )
    return out.reshape(n, lq, m * d)


def test_deform_attn_core_matches_brute_force():
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    n, m, d, lq, p = 2, 2, 3, 3, 2
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, dtype=torch.float64)
    # Some points fall outside the maps, to exercise the zero padding.
    locations = torch.rand(n, lq, m, len(shapes), p, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(n, lq, m, len(shapes), p, dtype=torch.float64)

    out = ms_deform_attn_core_pytorch(value, shapes, locations, weights)
    torch.testing.assert_close(out, brute_force_deform_attn(value, shapes, locations, weights))
    # An (L, 2) tensor of shapes is accepted too.
    torch.testing.assert_close(
        ms_deform_attn_core_pytorch(value, torch.tensor(shapes), locations, weights), out
    )


def test_ms_deform_attn_module_matches_brute_force():
    torch.manual_seed(1)
    shapes = [(4, 3), (2, 2)]
    c, m, num_levels, p, lq = 8, 2, 2, 3, 5
    attn = MSDeformAttn(d_model=c, n_levels=num_levels, n_heads=m, n_points=p).double()
    for param in attn.parameters():  # the default init has zero offset weights: randomize
        nn.init.normal_(param, std=0.5)
    query = torch.randn(1, lq, c, dtype=torch.float64)
    inputs = torch.randn(1, sum(h * w for h, w in shapes), c, dtype=torch.float64)
    reference = torch.rand(1, lq, num_levels, 2, dtype=torch.float64)

    # Checkpoint layout: offsets (heads, levels, points, xy) in pixels of each level,
    # attention weights softmaxed jointly over (levels, points).
    value = attn.value_proj(inputs).view(1, -1, m, c // m)
    offsets = attn.sampling_offsets(query).view(1, lq, m, num_levels, p, 2)
    weights = attn.attention_weights(query).view(1, lq, m, num_levels * p).softmax(-1)
    weights = weights.view(1, lq, m, num_levels, p)
    locations = torch.empty_like(offsets)
    for level, (h, w) in enumerate(shapes):
        locations[..., level, :, 0] = (
            reference[:, :, None, level, None, 0] + offsets[..., level, :, 0] / w
        )
        locations[..., level, :, 1] = (
            reference[:, :, None, level, None, 1] + offsets[..., level, :, 1] / h
        )
    expected = attn.output_proj(brute_force_deform_attn(value, shapes, locations, weights))

    torch.testing.assert_close(attn(query, reference, inputs, shapes), expected)


# Loads the two modules by path: importing the package would pull in detectron2, which costs
# seconds and is not needed here.
TRITON_INTERPRETER_CHECK = """
import importlib.util, sys, torch
def load(name):
    spec = importlib.util.spec_from_file_location(name, sys.argv[1] + "/" + name + ".py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
ms_deform_attn_core_pytorch = load("ms_deform_attn").ms_deform_attn_core_pytorch
ms_deform_attn_triton = load("ms_deform_attn_triton").ms_deform_attn_triton
torch.manual_seed(0)
shapes = [(5, 7), (3, 4), (1, 2)]
value = torch.randn(2, sum(h * w for h, w in shapes), 2, 6)
locations = torch.rand(2, 13, 2, 3, 3, 2) * 1.6 - 0.3
locations[0, 0, 0, 0, 0] = torch.tensor([1e6, -1e6])
weights = torch.rand(2, 13, 2, 3, 3)
out = ms_deform_attn_triton(value, shapes, locations, weights, block_queries=8)
torch.testing.assert_close(out, ms_deform_attn_core_pytorch(value, shapes, locations, weights))
"""


def test_triton_kernel_matches_pytorch_in_interpreter():
    pytest.importorskip("triton")
    # The interpreter flag is read when the kernel is defined: use a fresh interpreter.
    env = dict(os.environ, TRITON_INTERPRET="1")
    package_dir = Path(ms_deform_attn_core_pytorch.__code__.co_filename).parent
    run = subprocess.run(
        [sys.executable, "-c", TRITON_INTERPRETER_CHECK, str(package_dir)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inference_path_matches_pytorch():
    from expedite_vit.modeling.mask2former import ms_deform_attn

    torch.manual_seed(0)
    shapes = [(20, 30), (10, 15), (5, 8)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 8, 32, device="cuda")
    locations = torch.rand(2, 700, 8, 3, 4, 2, device="cuda") * 1.2 - 0.1
    weights = torch.rand(2, 700, 8, 3, 4, device="cuda").softmax(-1)
    with torch.no_grad():
        out = ms_deform_attn.multi_scale_deformable_attention(value, shapes, locations, weights)
    assert not ms_deform_attn._triton_failed
    torch.testing.assert_close(
        out, ms_deform_attn_core_pytorch(value, shapes, locations, weights), rtol=1e-4, atol=1e-4
    )


def test_ms_deform_attn_rejects_bad_inputs():
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=1)
    query, reference = torch.randn(1, 3, 8), torch.rand(1, 3, 2, 2)
    with pytest.raises(ValueError, match="feature levels"):
        attn(query, reference, torch.randn(1, 4, 8), [(2, 2)])
    with pytest.raises(ValueError, match="do not add up"):
        attn(query, reference, torch.randn(1, 7, 8), [(2, 2), (1, 2)])
    with pytest.raises(ValueError, match="channels"):
        attn(query, reference, torch.randn(1, 6, 4), [(2, 2), (1, 2)])
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)


# ---------------------------------------------------------------------------------------------
# Checkpoint keys and shapes


class StubBackbone(nn.Module):
    """Parameter-free stand-in: the key test only needs the head built for its output shapes."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.size_divisibility = 32

    def output_shape(self):
        return {
            n: ShapeSpec(channels=c, stride=s) for n, c, s in zip(NAMES, self.channels, STRIDES)
        }


SWIN_L = (192, 384, 768, 1536)
R50 = (256, 512, 1024, 2048)
OFFICIAL_CONFIGS = {
    "configs/coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml": (
        SWIN_L,
        133,
        200,
    ),
    "configs/coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml": (
        SWIN_L,
        80,
        200,
    ),
    "configs/ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml": (
        SWIN_L,
        150,
        100,
    ),
    "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml": (R50, 133, 100),
}


def build_official_layout(channels, num_classes, num_queries):
    backbone = StubBackbone(channels)
    return MaskFormer(
        backbone=backbone,
        sem_seg_head=build_mask2former_head(
            backbone.output_shape(), num_classes, num_queries=num_queries
        ),
        criterion=build_mask2former_criterion(num_classes, dec_layers=9),
        num_queries=num_queries,
        object_mask_threshold=0.8,
        overlap_threshold=0.8,
        pixel_mean=[123.675, 116.280, 103.530],
        pixel_std=[58.395, 57.120, 57.375],
    )


@pytest.mark.parametrize("config", sorted(OFFICIAL_CONFIGS))
def test_head_keys_and_shapes_match_official_checkpoint(fixtures_dir, config):
    official = json.loads((Path(fixtures_dir) / FIXTURE).read_text())["models"][config]
    official = {k: v for k, v in official.items() if not k.startswith("backbone.")}
    with torch.device("meta"):  # shapes only: skip allocating and initializing weights
        model = build_official_layout(*OFFICIAL_CONFIGS[config])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours.keys() == official.keys()
    assert ours == official


def test_official_layout_checkpoint_loads_strictly(fixtures_dir):
    config = (
        "configs/coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml"
    )
    official = json.loads((Path(fixtures_dir) / FIXTURE).read_text())["models"][config]
    torch.manual_seed(0)
    checkpoint = {
        k: torch.randn(shape) for k, shape in official.items() if not k.startswith("backbone.")
    }
    model = build_official_layout(*OFFICIAL_CONFIGS[config])
    assert model.criterion.empty_weight[-1].item() == pytest.approx(0.1)
    model.load_state_dict(checkpoint, strict=True)
    key = (
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.3.self_attn.sampling_offsets.weight"
    )
    assert torch.equal(model.state_dict()[key], checkpoint[key])


# ---------------------------------------------------------------------------------------------
# Matcher


def test_matcher_cost_matrix_matches_plain_computation():
    torch.manual_seed(0)
    num_queries, num_targets, num_classes, h, w = 5, 3, 4, 6, 7
    logits = torch.randn(num_queries, num_classes + 1)
    pred_masks = torch.randn(num_queries, h, w)
    labels = torch.tensor([2, 0, 2])
    tgt_masks = (torch.rand(num_targets, h, w) > 0.5).float()
    # Points on pixel centres: bilinear sampling reads the pixel values exactly.
    pixels = [(i, j) for i in range(h) for j in range(w)][::2]
    coords = torch.tensor([[(j + 0.5) / w, (i + 0.5) / h] for i, j in pixels])
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=len(pixels))

    cost = matcher.cost_matrix(logits, pred_masks, labels, tgt_masks, coords)

    assert cost.shape == (num_queries, num_targets)
    for q in range(num_queries):
        probs = torch.softmax(logits[q], -1)
        x = [pred_masks[q, i, j].item() for i, j in pixels]
        sig = [1 / (1 + math.exp(-v)) for v in x]
        for t in range(num_targets):
            y = [tgt_masks[t, i, j].item() for i, j in pixels]
            bce = sum(
                -(yi * math.log(si) + (1 - yi) * math.log(1 - si)) for si, yi in zip(sig, y)
            ) / len(y)
            dice = 1 - (2 * sum(si * yi for si, yi in zip(sig, y)) + 1) / (sum(sig) + sum(y) + 1)
            expected = 2.0 * -probs[labels[t]].item() + 5.0 * bce + 5.0 * dice
            assert cost[q, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def plain_constant_mask_cost(logits, mask_logit, label, target_value, num_points):
    """Cost (2, 5, 5 weights) of a spatially constant predicted mask vs a constant target."""
    prob = 1 / (1 + math.exp(-mask_logit))
    bce = -(target_value * math.log(prob) + (1 - target_value) * math.log(1 - prob))
    dice = 1 - (2 * num_points * prob * target_value + 1) / (
        num_points * prob + num_points * target_value + 1
    )
    return -2.0 * torch.softmax(logits, -1)[label].item() + 5.0 * bce + 5.0 * dice


@pytest.mark.parametrize("num_queries,num_targets", [(4, 4), (6, 3)])
def test_matcher_assignment_is_optimal(num_queries, num_targets):
    torch.manual_seed(num_queries)
    num_classes, num_points = 5, 16
    logits = torch.randn(1, num_queries, num_classes + 1) * 2
    mask_logits = torch.randn(num_queries)
    # Spatially constant masks make the costs independent of where points are sampled.
    pred_masks = mask_logits[None, :, None, None].expand(1, num_queries, 8, 8).clone()
    labels = torch.randperm(num_classes)[:num_targets]
    target_values = [float(t % 2) for t in range(num_targets)]
    tgt_masks = torch.stack([torch.full((8, 8), v) for v in target_values])
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points)

    [(rows, cols)] = matcher(
        {"pred_logits": logits, "pred_masks": pred_masks}, [{"labels": labels, "masks": tgt_masks}]
    )

    cost = [
        [
            plain_constant_mask_cost(
                logits[0, q], mask_logits[q].item(), labels[t].item(), target_values[t], num_points
            )
            for t in range(num_targets)
        ]
        for q in range(num_queries)
    ]
    best = min(
        itertools.permutations(range(num_queries), num_targets),
        key=lambda queries: sum(cost[q][t] for t, q in enumerate(queries)),
    )
    assert len(rows) == len(cols) == num_targets
    assert {(q, t) for q, t in zip(rows.tolist(), cols.tolist())} == {
        (q, t) for t, q in enumerate(best)
    }


def test_matcher_handles_images_without_targets():
    matcher = HungarianMatcher(num_points=8)
    outputs = {"pred_logits": torch.randn(1, 3, 3), "pred_masks": torch.randn(1, 3, 4, 4)}
    [(rows, cols)] = matcher(
        outputs, [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 4, 4)}]
    )
    assert rows.numel() == cols.numel() == 0


def test_criterion_without_ground_truth():
    criterion = build_mask2former_criterion(3, dec_layers=1, train_num_points=16)
    pred_masks = torch.randn(2, 4, 8, 8, requires_grad=True)
    outputs = {"pred_logits": torch.randn(2, 4, 4), "pred_masks": pred_masks}
    outputs["aux_outputs"] = [{"pred_logits": torch.randn(2, 4, 4), "pred_masks": pred_masks * 2}]
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}
    losses = criterion(outputs, [empty, empty])
    assert set(losses) == {
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_mask_0",
        "loss_dice_0",
    }
    assert losses["loss_mask"].item() == 0 and losses["loss_ce"].item() > 0
    sum(losses.values()).backward()
    assert pred_masks.grad is not None


# ---------------------------------------------------------------------------------------------
# A tiny model: training and inference


class TinyBackbone(nn.Module):
    """res2..res5 from average-pooled pixels and a 1x1 conv: enough to train end to end."""

    channels = (8, 16, 24, 32)
    size_divisibility = 32

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, c, kernel_size=1) for c in self.channels)

    def output_shape(self):
        return {
            n: ShapeSpec(channels=c, stride=s) for n, c, s in zip(NAMES, self.channels, STRIDES)
        }

    def forward(self, x):
        return {
            n: conv(nn.functional.avg_pool2d(x, s))
            for n, conv, s in zip(NAMES, self.convs, STRIDES)
        }


THINGS = {1: 0, 2: 1}  # dataset id -> contiguous id; class 2 is stuff


def tiny_model_config(**overrides):
    kwargs = dict(
        backbone=L(TinyBackbone)(),
        sem_seg_head=L(build_mask2former_head)(
            input_shape={
                n: ShapeSpec(channels=c, stride=s)
                for n, c, s in zip(NAMES, TinyBackbone.channels, STRIDES)
            },
            num_classes=3,
            num_queries=6,
            hidden_dim=32,
            conv_dim=32,
            mask_dim=32,
            nheads=4,
            dim_feedforward=64,
            dec_layers=3,
            enc_layers=1,
            enc_dim_feedforward=64,
        ),
        criterion=L(build_mask2former_criterion)(num_classes=3, dec_layers=3, train_num_points=64),
        num_queries=6,
        object_mask_threshold=0.0,
        overlap_threshold=0.0,
        metadata=SimpleNamespace(thing_dataset_id_to_contiguous_id=THINGS),
        size_divisibility=32,
        pixel_mean=[128.0, 128.0, 128.0],
        pixel_std=[64.0, 64.0, 64.0],
        semantic_on=True,
        panoptic_on=True,
        instance_on=True,
        test_topk_per_image=5,
    )
    kwargs.update(overrides)
    return L(MaskFormer)(**kwargs)


def tiny_inputs(with_instances=True):
    generator = torch.Generator().manual_seed(1)
    batch = []
    for h, w in [(60, 50), (40, 64)]:
        item = {
            "image": torch.rand(3, h, w, generator=generator) * 255,
            "height": 2 * h,
            "width": 2 * w,
        }
        if with_instances:
            instances = Instances((h, w))
            instances.gt_classes = torch.tensor([0, 2])
            masks = torch.zeros(2, h, w, dtype=torch.bool)
            masks[0, 5:30, 5:20] = True
            masks[1, 30:, :] = True
            instances.gt_masks = masks
            item["instances"] = instances
        batch.append(item)
    return batch


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = instantiate(tiny_model_config())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def total_loss():
        torch.manual_seed(123)  # same matcher and loss points at both evaluations
        losses = model(tiny_inputs())
        return losses, sum(losses.values())

    losses, before = total_loss()
    # Final + 3 auxiliary predictions, three losses each.
    assert set(losses) == {
        f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1", "_2")
    }
    assert all(torch.isfinite(v) for v in losses.values())
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    _, after = total_loss()
    assert after.item() < before.item()


def test_inference_output_formats():
    torch.manual_seed(0)
    model = instantiate(tiny_model_config()).eval()
    with torch.no_grad():
        results = model(tiny_inputs(with_instances=False))
    for result, (h, w) in zip(results, [(120, 100), (80, 128)]):
        assert result["sem_seg"].shape == (3, h, w)
        seg, segments_info = result["panoptic_seg"]
        assert seg.shape == (h, w) and seg.dtype == torch.int32
        assert set(seg.unique().tolist()) - {0} == {s["id"] for s in segments_info}
        for s in segments_info:
            assert s["isthing"] == (s["category_id"] in THINGS.values())
        instances = result["instances"]
        assert instances.image_size == (h, w)
        k = len(instances)
        assert 0 < k <= 5
        assert instances.pred_masks.shape == (k, h, w)
        assert instances.pred_boxes.tensor.shape == (k, 4)
        assert instances.scores.shape == instances.pred_classes.shape == (k,)
        # With panoptic inference on, instances are things only.
        assert set(instances.pred_classes.tolist()) <= set(THINGS.values())

    semantic_only = instantiate(tiny_model_config(panoptic_on=False, instance_on=False)).eval()
    assert not semantic_only.sem_seg_postprocess_before_inference
    with torch.no_grad():
        [result] = semantic_only(tiny_inputs(with_instances=False)[:1])
    assert set(result) == {"sem_seg"} and result["sem_seg"].shape == (3, 120, 100)


def test_panoptic_inference_merges_stuff_and_drops_no_object():
    model = instantiate(tiny_model_config(object_mask_threshold=0.5, overlap_threshold=0.8))
    big = 10.0
    # Queries: thing 0 on the left half, stuff 2 on the top right, stuff 2 on the bottom right,
    # a "no object" query everywhere, and a low-confidence query.
    mask_cls = torch.full((5, 4), -big)
    for q, c in enumerate([0, 2, 2, 3]):
        mask_cls[q, c] = big
    mask_cls[4] = 0.0
    mask_pred = torch.full((5, 4, 4), -big)
    mask_pred[0, :, :2] = big
    mask_pred[1, :2, 2:] = big
    mask_pred[2, 2:, 2:] = big
    mask_pred[3] = big
    mask_pred[4] = big

    seg, segments_info = model.panoptic_inference(mask_cls, mask_pred)

    expected = torch.tensor([[1, 1, 2, 2]] * 4, dtype=torch.int32)
    assert torch.equal(seg, expected)
    assert segments_info == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": False, "category_id": 2},
    ]


def test_position_embedding_sine_values():
    pe = PositionEmbeddingSine(num_pos_feats=4)(torch.zeros(2, 1, 3, 5))
    assert pe.shape == (2, 8, 3, 5)
    i, j = 1, 3
    y, x = (i + 1) / 3 * 2 * math.pi, (j + 1) / 5 * 2 * math.pi
    freq = 10000 ** (2 / 4)
    expected = [math.sin(y), math.cos(y), math.sin(y / freq), math.cos(y / freq)]
    expected += [math.sin(x), math.cos(x), math.sin(x / freq), math.cos(x / freq)]
    torch.testing.assert_close(pe[1, :, i, j], torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_bad_inputs_give_clear_errors():
    shapes = {
        n: ShapeSpec(channels=c, stride=s) for n, c, s in zip(NAMES, TinyBackbone.channels, STRIDES)
    }
    decoder = MSDeformAttnPixelDecoder(shapes, conv_dim=32, mask_dim=32, transformer_enc_layers=1)
    features = TinyBackbone()(torch.zeros(1, 3, 64, 64))
    with pytest.raises(KeyError, match="res2"):
        decoder.forward_features({k: v for k, v in features.items() if k != "res2"})
    features["res4"] = torch.zeros(1, 5, 4, 4)
    with pytest.raises(ValueError, match="res4"):
        decoder.forward_features(features)
    with pytest.raises(ValueError, match="not in input_shape"):
        MSDeformAttnPixelDecoder({"res2": shapes["res2"]}, conv_dim=32)

    predictor = MultiScaleMaskedTransformerDecoder(
        32, num_classes=3, hidden_dim=32, num_queries=4, nheads=4, dec_layers=1, mask_dim=32
    )
    with pytest.raises(ValueError, match="3 feature levels"):
        predictor([torch.zeros(1, 32, 2, 2)] * 2, torch.zeros(1, 32, 8, 8))
    with pytest.raises(ValueError, match="feature level 1"):
        predictor(
            [torch.zeros(1, 32, 2, 2), torch.zeros(1, 16, 4, 4), torch.zeros(1, 32, 8, 8)],
            torch.zeros(1, 32, 8, 8),
        )

    with pytest.raises(ValueError, match="sem_seg_postprocess_before_inference"):
        instantiate(tiny_model_config(sem_seg_postprocess_before_inference=False))
    with pytest.raises(ValueError, match="num_queries"):
        instantiate(tiny_model_config(num_queries=7))


# ---------------------------------------------------------------------------------------------
# Old key names of released checkpoints (legacy_keys.py)

OLD_QUERY = "sem_seg_head.predictor.static_query.weight"
NEW_QUERY = "sem_seg_head.predictor.query_feat.weight"


def old_query_checkpoint(state):
    """``state`` with the query features under the name older official checkpoints use."""
    checkpoint = dict(state)
    checkpoint[OLD_QUERY] = checkpoint.pop(NEW_QUERY)
    return checkpoint


def save_checkpoint(checkpoint, path):
    """Write a detectron2 model-zoo .pkl (numpy arrays), the format of the released files."""
    import pickle

    model = {k: v.numpy() for k, v in checkpoint.items()}
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "test"}, f)
    return str(path)


def semantic_outputs(model):
    with torch.no_grad():
        return [r["sem_seg"] for r in model.eval()(tiny_inputs(with_instances=False))]


class LegacyKeyLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger(legacy_keys.__name__).addHandler(self)
        return self.messages

    def __exit__(self, *exc):
        logging.getLogger(legacy_keys.__name__).removeHandler(self)


def test_old_query_name_loads_with_same_outputs(tmp_path):
    torch.manual_seed(0)
    trained = instantiate(tiny_model_config())
    state = trained.state_dict()
    expected = semantic_outputs(trained)
    old = old_query_checkpoint(state)

    torch.manual_seed(1)
    by_state_dict = instantiate(tiny_model_config())
    with LegacyKeyLog() as messages:
        by_state_dict.load_state_dict(old, strict=True)
    assert len(messages) == 1 and OLD_QUERY in messages[0] and NEW_QUERY in messages[0]
    assert OLD_QUERY in old and NEW_QUERY not in old  # the caller's dict is left as it was

    torch.manual_seed(2)
    by_checkpointer = instantiate(tiny_model_config())
    with LegacyKeyLog() as messages:
        load_checkpoint(by_checkpointer, save_checkpoint(old, tmp_path / "old.pkl"))
    assert len(messages) == 1

    for model in (by_state_dict, by_checkpointer):
        assert torch.equal(model.state_dict()[NEW_QUERY], state[NEW_QUERY])
        for got, want in zip(semantic_outputs(model), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_old_pixel_decoder_layout_loads():
    # MaskFormer-era heads: pixel decoder weights directly under sem_seg_head.
    torch.manual_seed(0)
    state = instantiate(tiny_model_config()).state_dict()
    old = {k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v for k, v in state.items()}
    model = instantiate(tiny_model_config())
    with LegacyKeyLog() as messages:
        model.load_state_dict(old, strict=True)
    assert len(messages) == 1
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "extra",
    [
        {NEW_QUERY: torch.zeros(6, 32)},  # both names
        {"sem_seg_head.predictor.bogus.weight": torch.zeros(1)},  # unknown, in the decoder
        {"sem_seg_head.bogus.weight": torch.zeros(1)},  # unknown, would-be pixel decoder key
    ],
    ids=["both_names", "unknown_decoder_key", "unknown_head_key"],
)
def test_old_names_do_not_hide_other_mismatches(tmp_path, extra):
    torch.manual_seed(0)
    checkpoint = {**old_query_checkpoint(instantiate(tiny_model_config()).state_dict()), **extra}
    unexpected = OLD_QUERY if NEW_QUERY in extra else next(iter(extra))
    model = instantiate(tiny_model_config())
    with pytest.raises(RuntimeError, match=re.escape(unexpected)):
        model.load_state_dict(checkpoint, strict=True)
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(model, save_checkpoint(checkpoint, tmp_path / "bad.pkl"))
    message = str(error.value)
    assert "not in the model (1)" in message and unexpected in message
    assert "missing" not in message
