"""Mask2Former LazyConfig models: official checkpoint layouts, Expedit presets, dataset mappers,
evaluation through detectron2's evaluators, the ViTDet backbone, and train_net.py end to end.

The official Swin-L / R50 models are only built on the meta device (no memory, no compute); running
models are the small built-in ones, on a 2 + 3 image expedite_scenes split generated per module.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import BitMasks, Instances
from panopticapi.utils import rgb2id
from PIL import Image
from torch import nn

from conftest import load_script, skip_weight_init
from expedite_vit.benchmark import BenchmarkSettings, run_benchmark
from expedite_vit.benchmark.fidelity import build_evaluator
from expedite_vit.runtime.checkpoint import CheckpointMismatchError, load_checkpoint
from expedite_vit.data import generate_expedite_scenes, register_expedite_scenes
from expedite_vit.data.panoptic_semantic import (
    panoptic_to_semantic,
    prepare_panoptic_semantic,
    register_panoptic_with_sem_seg,
)
from expedite_vit.data.subset import register_image_subset
from expedite_vit.data.mask2former_mappers import (
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)
from expedite_vit.evaluation import build_segmentation_evaluator
from expedite_vit.modeling import ExpeditedViT
from expedite_vit.modeling.vitdet_pyramid import Mask2FormerSimpleFeaturePyramid
from expedite_vit.runtime.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs" / "Mask2Former"
TRAIN_NET = REPO_ROOT / "train_net.py"
FIXTURE = "mask2former_official.json"  # in the conftest's fixtures_dir
SWIN_TINY_CONFIG = CONFIGS / "builtin" / "maskformer2_swin_tiny_scenes_panoptic.py"
VITDET_TINY_CONFIG = CONFIGS / "builtin" / "maskformer2_vitdet_tiny_scenes_panoptic.py"

PANOPTIC_SWIN_L = "COCO-PanopticSegmentation/maskformer2_swin_large_IN21k_384_bs16_100ep.py"
PANOPTIC_R50 = "COCO-PanopticSegmentation/maskformer2_R50_bs16_50ep.py"
INSTANCE_SWIN_L = "COCO-InstanceSegmentation/maskformer2_swin_large_IN21k_384_bs16_100ep.py"
SEMANTIC_SWIN_L = "ADE20K-SemanticSegmentation/maskformer2_swin_large_IN21k_384_bs16_160k_res640.py"
# Our config -> the official YAML whose checkpoint it must load.
OFFICIAL_YAML = {
    PANOPTIC_SWIN_L: "configs/coco/panoptic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
    PANOPTIC_R50: "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml",
    INSTANCE_SWIN_L: "configs/coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
    SEMANTIC_SWIN_L: "configs/ade20k/semantic-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_160k_res640.yaml",
}
# The presets of the released Expedit configs: (location, grid, n_iters, t, locality_window, k,
# t'). The published FLOPs were measured at location one lower (README, BENCHMARKS.md).
PUBLISHED_PRESETS = {
    PANOPTIC_SWIN_L: (10, 8, 5, 0.05, 7, 10, 0.05),
    INSTANCE_SWIN_L: (12, 8, 5, 0.01, 11, 60, 0.01),
    SEMANTIC_SWIN_L: (7, 8, 5, 0.01, 5, 10, 0.01),
}
COCO_PANOPTIC_TASKS = {
    "panoptic_seg": "coco_2017_val_panoptic",
    "segm": "coco_2017_val",
    "sem_seg": "coco_2017_val_panoptic_with_sem_seg",
}
# (short edge, max size) at test time, and the evaluated tasks -> datasets.
TEST_SETTINGS = {
    PANOPTIC_SWIN_L: (800, 1333, COCO_PANOPTIC_TASKS),
    PANOPTIC_R50: (800, 1333, COCO_PANOPTIC_TASKS),
    INSTANCE_SWIN_L: (800, 1333, {"segm": "coco_2017_val"}),
    SEMANTIC_SWIN_L: (640, 2560, {"sem_seg": "ade20k_sem_seg_val"}),
}
SCENES_TASKS = {
    "panoptic_seg": "expedite_scenes_val_panoptic",
    "segm": "expedite_scenes_val",
    "sem_seg": "expedite_scenes_val_sem_seg",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    """A 2 + 3 image expedite_scenes split, registered under the expedite_scenes names.

    $EXPEDITE_DATASETS points at it too: the built-in configs register the names when loaded, and
    train_net.py subprocesses inherit it.
    """
    root = str(tmp_path_factory.mktemp("scenes") / "expedite_scenes")
    generate_expedite_scenes(root, num_train=2, num_val=3)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("EXPEDITE_DATASETS", root)
        register_expedite_scenes()
        yield root
    register_expedite_scenes()  # the names point back at the default root for other tests


def tiny_config(path=SWIN_TINY_CONFIG, overrides=()):
    return load_config(str(path), list(overrides))


# ---- Official configs: checkpoint layout, presets, test-time settings ---------------------------


@pytest.mark.parametrize(
    "config, expedite",
    [(c, on) for c in (PANOPTIC_SWIN_L, INSTANCE_SWIN_L, SEMANTIC_SWIN_L) for on in (True, False)]
    + [(PANOPTIC_R50, None)],
)
def test_official_config_state_dict_is_the_checkpoints(fixtures_dir, config, expedite):
    official = json.loads((Path(fixtures_dir) / FIXTURE).read_text())["models"][OFFICIAL_YAML[config]]
    cfg = load_config(str(CONFIGS / config))
    if expedite is None:
        assert "expedite" not in cfg.model.backbone  # R50: the plain baseline
    else:
        cfg.model.backbone.expedite.enabled = expedite
    with torch.device("meta"):
        model = instantiate(cfg.model)
    if expedite is not None:
        # Clustering runs in stage 3 (index 2) with the presets, nowhere when switched off.
        point = model.backbone.reduction_point()
        assert (point is not None and point[0] == 2) if expedite else point is None
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(official)
    assert ours == official


@pytest.mark.parametrize("config", sorted(PUBLISHED_PRESETS))
def test_published_expedite_presets(config):
    expedite = load_config(str(CONFIGS / config)).model.backbone.expedite
    fields = ("grid", "n_iters", "cluster_temperature", "locality_window", "k", "reconstruct_temperature")
    assert expedite.enabled and expedite.method == "expedit" and expedite.expedit.normalize == "sum"
    got = (expedite.location,) + tuple(expedite.expedit[f] for f in fields)
    assert got == PUBLISHED_PRESETS[config]


def test_presets_are_complete_expedite_configs():
    # One home, one style: each preset names every common ExpediteConfig field and every
    # setting of its method (Expedit); the other methods' presets, where measured, are partial.
    from conftest import COMMON_SETTINGS
    from expedite import ExpediteConfig, ExpeditSettings

    presets = LazyConfig.load(str(CONFIGS / "common" / "models.py")).SWIN_LARGE_EXPEDITE_PRESETS
    assert set(presets) == {"coco_panoptic", "coco_instance", "ade20k_semantic"}
    for name, preset in presets.items():
        assert {*COMMON_SETTINGS, "expedit"} <= set(preset) <= {*COMMON_SETTINGS, "expedit", "ailurus", "tome", "itpn"}, name
        assert preset["method"] == "expedit", name
        assert set(preset["expedit"]) == set(ExpeditSettings.setting_names()), name
        ExpediteConfig(**preset)


@pytest.mark.parametrize("config", sorted(TEST_SETTINGS))
def test_official_test_time_settings(config):
    short_edge, max_size, tasks = TEST_SETTINGS[config]
    cfg = load_config(str(CONFIGS / config))
    [resize] = cfg.dataloader.test.mapper.augmentations
    assert (resize.short_edge_length, resize.max_size) == (short_edge, max_size)
    assert cfg.dataloader.test.mapper.image_format == "RGB"
    assert dict(cfg.dataloader.evaluator.datasets) == tasks
    assert cfg.model.size_divisibility == 32
    # Stated once in the head, read by the criterion and the meta-architecture.
    assert cfg.model.num_queries == cfg.model.sem_seg_head.num_queries
    assert cfg.model.criterion.num_classes == cfg.model.sem_seg_head.num_classes


@pytest.mark.parametrize("config", [PANOPTIC_SWIN_L, SEMANTIC_SWIN_L])
def test_official_config_saves_as_loadable_yaml_with_backbone_lr_factor(config, tmp_path):
    cfg = load_config(str(CONFIGS / config))
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(path))
    assert not (tmp_path / "config.yaml.pkl").exists()  # detectron2's fallback when yaml fails
    saved = LazyConfig.load(str(path))
    assert saved.model.backbone.expedite == cfg.model.backbone.expedite

    model = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.Linear(2, 2)})
    saved.optimizer.params.model = model
    groups = instantiate(saved.optimizer).param_groups
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lrs[id(model.backbone.weight)] == pytest.approx(1e-5)  # official: backbone lr x 0.1
    assert lrs[id(model.head.weight)] == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.backbone.expedite.location=24", r"location=24\b.* past the last Swin block.*\[0, 23\]"),
        ("model.backbone.expedite.expedit.grid=13", r"grid 13x13 is larger than the 12x12 Swin window"),
    ],
)
def test_bad_expedite_settings_fail_at_instantiation(override, message):
    cfg = load_config(str(CONFIGS / PANOPTIC_SWIN_L), [override])
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        instantiate(cfg.model)


def test_checkpoint_of_another_model_lists_the_mismatched_keys(fixtures_dir, tmp_path):
    shapes = json.loads((Path(fixtures_dir) / FIXTURE).read_text())["models"]
    r50_shapes = shapes[OFFICIAL_YAML[PANOPTIC_R50]]
    # Stride-0 views keep the 44M-parameter checkpoint a few kilobytes on disk.
    one = torch.zeros(1)
    checkpoint = {k: one.expand(shape) for k, shape in r50_shapes.items()}
    path = tmp_path / "r50_layout.pth"
    torch.save({"model": checkpoint}, path)
    with skip_weight_init():
        model = instantiate(load_config(str(CONFIGS / PANOPTIC_SWIN_L)).model)
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(model, str(path))
    message = str(error.value)
    assert "missing in the checkpoint (363)" in message  # the Swin-L backbone
    assert "backbone.layers.0.blocks.0.attn.qkv.weight" in message
    assert "not in the model (265)" in message  # the ResNet-50 backbone
    assert "backbone.res2.0.conv1.weight" in message
    # Head parameters sized by the backbone's channels or the query count.
    assert "of a different shape (6)" in message
    assert (
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight: checkpoint (256, 2048, 1, 1) vs "
        "model (256, 1536, 1, 1)" in message
    )
    assert "sem_seg_head.predictor.query_feat.weight: checkpoint (100, 256) vs model (200, 256)" in message


# ---- Mappers ------------------------------------------------------------------------------------


def _dataset_dict(name, index=0):
    return dict(DatasetCatalog.get(name)[index])


def test_panoptic_mapper_masks_reassemble_the_png(scenes_root):
    record = _dataset_dict("expedite_scenes_train_panoptic")
    mapped = MaskFormerPanopticDatasetMapper(augmentations=[])(record)
    segment_ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
    instances = mapped["instances"]
    masks = instances.gt_masks.tensor.numpy()
    segments = [s for s in record["segments_info"] if not s.get("iscrowd", 0)]
    assert len(instances) == len(segments) > 0
    assert mapped["image"].shape == (3, *segment_ids.shape) and mapped["image"].dtype == torch.uint8
    assert masks.sum(0).max() == 1  # segments do not overlap

    rebuilt = np.zeros_like(segment_ids)
    for segment, mask, label in zip(segments, masks, instances.gt_classes.tolist()):
        assert label == segment["category_id"]
        rebuilt[mask] = segment["id"]
    assert np.array_equal(rebuilt, segment_ids)
    # Things and stuff are both targets.
    metadata = MetadataCatalog.get("expedite_scenes_train_panoptic")
    thing_ids = set(metadata.thing_dataset_id_to_contiguous_id.values())
    labels = set(instances.gt_classes.tolist())
    assert labels & thing_ids and labels - thing_ids


def test_panoptic_mapper_augments_masks_with_the_image(scenes_root):
    record = _dataset_dict("expedite_scenes_train_panoptic")
    mapper = MaskFormerPanopticDatasetMapper(
        augmentations=[T.RandomFlip(prob=1.0, horizontal=True), T.Resize((128, 96))]
    )
    mapped = mapper(record)
    # The same flip and resize done by hand: bilinear for the image, nearest for the PNG.
    image = np.asarray(Image.open(record["file_name"]).convert("RGB"))[:, ::-1]
    expected_image = np.asarray(Image.fromarray(image).resize((96, 128), Image.BILINEAR))
    png = np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB"))[:, ::-1]
    segment_ids = rgb2id(np.asarray(Image.fromarray(png).resize((96, 128), Image.NEAREST)))
    expected_masks = [segment_ids == s["id"] for s in record["segments_info"]]
    expected_masks = np.stack([m for m in expected_masks if m.any()])

    assert np.array_equal(mapped["image"].permute(1, 2, 0).numpy(), expected_image)
    assert np.array_equal(mapped["instances"].gt_masks.tensor.numpy(), expected_masks)
    assert mapped["instances"].image_size == (128, 96)


def test_instance_mapper_decodes_rle_masks(scenes_root):
    record = _dataset_dict("expedite_scenes_val")
    mapped = MaskFormerInstanceDatasetMapper(augmentations=[])(record)
    annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    instances = mapped["instances"]
    assert instances.gt_classes.tolist() == [a["category_id"] for a in annotations]
    for mask, annotation in zip(instances.gt_masks.tensor.numpy(), annotations):
        assert np.array_equal(mask, mask_util.decode(annotation["segmentation"]).astype(bool))


def test_semantic_mapper_one_mask_per_class(scenes_root):
    record = _dataset_dict("expedite_scenes_val_sem_seg")
    mapped = MaskFormerSemanticDatasetMapper(augmentations=[], ignore_label=255)(record)
    labels = np.asarray(Image.open(record["sem_seg_file_name"]))
    instances = mapped["instances"]
    assert instances.gt_classes.tolist() == sorted(set(np.unique(labels).tolist()) - {255})
    rebuilt = np.full_like(labels, 255)
    for mask, label in zip(instances.gt_masks.tensor.numpy(), instances.gt_classes.tolist()):
        assert not (rebuilt[mask] != 255).any()
        rebuilt[mask] = label
    assert np.array_equal(rebuilt, labels)
    assert torch.equal(mapped["sem_seg"], torch.as_tensor(labels.astype(np.int64)))


def test_mapper_given_the_wrong_dataset_says_what_it_needs(scenes_root):
    with pytest.raises(ValueError, match="pan_seg_file_name"):
        MaskFormerPanopticDatasetMapper(augmentations=[])(_dataset_dict("expedite_scenes_val"))
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        MaskFormerSemanticDatasetMapper(augmentations=[])(_dataset_dict("expedite_scenes_val"))
    with pytest.raises(ValueError, match="'annotations'"):
        MaskFormerInstanceDatasetMapper(augmentations=[])(
            _dataset_dict("expedite_scenes_val_panoptic")
        )


# ---- Evaluation ---------------------------------------------------------------------------------


class GroundTruthModel(nn.Module):
    """Predicts the ground truth itself, in the MaskFormer output format."""

    def __init__(self, sem_seg_dataset, num_classes):
        super().__init__()
        self.semantic_files = {
            r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get(sem_seg_dataset)
        }
        self.num_classes = num_classes

    def forward(self, batched_inputs):
        results = []
        for record in batched_inputs:
            segment_ids = torch.as_tensor(
                rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB"))),
                dtype=torch.int32,
            )
            segments = [
                {"id": s["id"], "isthing": s["isthing"], "category_id": s["category_id"]}
                for s in record["segments_info"]
            ]
            things = [s for s in segments if s["isthing"]]
            instances = Instances(tuple(segment_ids.shape))
            masks = torch.stack([segment_ids == s["id"] for s in things])
            instances.pred_masks = masks
            instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
            instances.scores = torch.ones(len(things))
            instances.pred_classes = torch.tensor([s["category_id"] for s in things])
            labels = torch.as_tensor(np.asarray(Image.open(self.semantic_files[record["file_name"]])))
            # Ignored pixels (255) may be predicted as anything: clamp them to a valid class.
            labels = labels.long().clamp(max=self.num_classes - 1)
            sem_seg = nn.functional.one_hot(labels, self.num_classes).permute(2, 0, 1).float()
            results.append(
                {"panoptic_seg": (segment_ids, segments), "instances": instances, "sem_seg": sem_seg}
            )
        return results


def scenes_test_loader():
    cfg = tiny_config()
    cfg.dataloader.test.num_workers = 0
    return instantiate(cfg.dataloader.test)


def test_evaluators_pair_each_task_with_its_ground_truth(scenes_root):
    """Perfect predictions score 100 on every task: the datasets agree on images and classes."""
    metadata = MetadataCatalog.get("expedite_scenes_val_panoptic")
    model = GroundTruthModel("expedite_scenes_val_sem_seg", num_classes=len(metadata.stuff_classes))
    results = inference_on_dataset(
        model, scenes_test_loader(), build_segmentation_evaluator(SCENES_TASKS)
    )
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_semantic_pngs_made_from_panoptic_equal_the_generated_ones(scenes_root, tmp_path):
    """The built-in dataset writes its semantic PNGs independently of its panoptic ones: deriving
    them from the panoptic annotation must give the same labels, void included."""
    written = prepare_panoptic_semantic("expedite_scenes_val_panoptic", str(tmp_path / "semseg"))
    assert len(written) == 3
    generated = {r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get("expedite_scenes_val_sem_seg")}
    name = register_panoptic_with_sem_seg("expedite_scenes_val_panoptic", str(tmp_path / "semseg"))
    records = DatasetCatalog.get(name)
    assert len(records) == 3
    for record in records:
        derived = np.asarray(Image.open(record["sem_seg_file_name"]))
        assert np.array_equal(derived, np.asarray(Image.open(generated[record["file_name"]])))
        assert record["pan_seg_file_name"]  # still the panoptic record
    assert prepare_panoptic_semantic("expedite_scenes_val_panoptic", str(tmp_path / "semseg")) == []  # kept

    metadata = MetadataCatalog.get("expedite_scenes_val_panoptic")
    model = GroundTruthModel(name, num_classes=len(metadata.stuff_classes))
    results = inference_on_dataset(
        model, scenes_test_loader(), build_segmentation_evaluator({"sem_seg": name, "panoptic_seg": name})
    )
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100.0)


def test_panoptic_with_sem_seg_without_its_pngs_says_how_to_make_them(scenes_root, tmp_path):
    name = register_panoptic_with_sem_seg("expedite_scenes_val_panoptic", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="tools/prepare_panoptic_semantic.py expedite_scenes_val_panoptic"):
        DatasetCatalog.get(name)
    assert MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg").sem_seg_root.endswith(
        os.path.join("coco", "panoptic_semseg_val2017")
    )


def test_panoptic_to_semantic_labels_each_segment_and_ignores_void():
    segment_ids = np.array([[0, 5, 5], [7, 7, 0]])
    labels = panoptic_to_semantic(segment_ids, [{"id": 5, "category_id": 3}, {"id": 7, "category_id": 0}])
    assert labels.tolist() == [[255, 3, 3], [0, 0, 255]]
    with pytest.raises(ValueError, match="category id 300"):
        panoptic_to_semantic(segment_ids, [{"id": 5, "category_id": 300}])


def test_evaluation_on_some_images_of_a_dataset_scores_those_images(scenes_root, tmp_path):
    """The benchmark scores the first N images: a ground-truth subset of each task's dataset. On
    the whole dataset, the image not predicted would count as misses (and pq_compute refuses)."""
    metadata = MetadataCatalog.get("expedite_scenes_val_panoptic")
    model = GroundTruthModel("expedite_scenes_val_sem_seg", num_classes=len(metadata.stuff_classes))
    first_two = list(scenes_test_loader())[:2]
    cfg = tiny_config()
    file_names = [batch[0]["file_name"] for batch in first_two]

    def scores(evaluator):
        evaluator.reset()
        for batch in first_two:
            evaluator.process(batch, model(batch))
        return evaluator.evaluate()

    subset = scores(build_evaluator(cfg, "expedite_scenes_val_panoptic", str(tmp_path / "a"), file_names))
    assert subset["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert subset["segm"]["AP"] == pytest.approx(100.0)
    assert subset["sem_seg"]["mIoU"] == pytest.approx(100.0)
    # Without the subset, the third image's objects count as missed.
    assert scores(build_segmentation_evaluator({"segm": "expedite_scenes_val"}))["segm"]["AP"] < 90.0
    with pytest.raises(Exception, match="no prediction for the image"):
        scores(build_segmentation_evaluator({"panoptic_seg": "expedite_scenes_val_panoptic"}))
    assert len(DatasetCatalog.get("expedite_scenes_val_panoptic@2")) == 2
    assert len(DatasetCatalog.get("expedite_scenes_val_panoptic")) == 3  # the original is intact


def test_evaluation_subset_names_a_missing_image_and_a_foreign_dataset(scenes_root, tmp_path):
    with pytest.raises(ValueError, match="has no image named 'nowhere.jpg'"):
        register_image_subset("expedite_scenes_val", ["nowhere.jpg"], str(tmp_path))
    with pytest.raises(ConfigError, match="must come from one of them, not from 'expedite_scenes_train'"):
        build_evaluator(tiny_config(), "expedite_scenes_train", str(tmp_path))


def test_benchmark_covers_mask2former_segmentation(scenes_root):
    cfg = tiny_config(overrides=["model.object_mask_threshold=0.0"])
    settings = BenchmarkSettings(dataset="expedite_scenes_val_panoptic", num_images=2, warmup=0, iters=1)
    results = run_benchmark(cfg, settings)
    assert results["flops"]["ratio"]["backbone"] > 1.1  # stage 3 runs 4 of 6 blocks on 4x4 windows
    agreement = results["fidelity"]["agreement"]
    assert 0.0 <= agreement["panoptic_seg"]["pixel_agreement"] <= 1.0
    assert agreement["sem_seg"]["pixels"] == 2 * 256 * 256
    metric = results["fidelity"]["task_metric"]
    assert metric["images"] == 2
    for model in ("baseline", "expedited"):
        assert set(metric[model]) == {"panoptic_seg", "segm", "sem_seg"}
        assert math.isfinite(metric[model]["panoptic_seg"]["PQ"])
    assert set(results["fidelity"]["feature_cosine"]["backbone"]) == {"res2", "res3", "res4", "res5"}
    # Stages before the clustering stage are untouched.
    assert results["fidelity"]["feature_cosine"]["backbone"]["res2"] == pytest.approx(1.0, abs=1e-6)


def test_tiny_model_runs_through_all_three_evaluators(scenes_root, tmp_path):
    # An untrained model is not confident: keep every query so panoptic segments come out.
    cfg = tiny_config(overrides=["model.object_mask_threshold=0.0"])
    cfg.dataloader.test.num_workers = 0
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    evaluator = build_segmentation_evaluator(SCENES_TASKS, output_dir=str(tmp_path))
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    for task, keys in (
        ("panoptic_seg", ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")),
        ("segm", ("AP", "AP50", "AP75")),
        ("sem_seg", ("mIoU", "fwIoU", "mACC", "pACC")),
    ):
        for key in keys:
            assert math.isfinite(results[task][key]), (task, key, results[task][key])
    assert (tmp_path / "coco_instances_results.json").exists()


@pytest.mark.parametrize(
    "datasets, message",
    [
        ({}, "no task to evaluate"),
        ({"bbox": "expedite_scenes_val"}, r"unknown evaluation tasks \['bbox'\]"),
        ({"sem_seg": "expedite_scenes_val_panoptic"}, "'sem_seg' needs a semantic segmentation"),
        ({"panoptic_seg": "expedite_scenes_val"}, "'panoptic_seg' needs a COCO panoptic dataset"),
        ({"segm": "expedite_scenes_val_sem_seg"}, "'segm' needs a dataset with a COCO instances"),
        ({"segm": "expedite_scenes_vall"}, "did you mean 'expedite_scenes_val'"),
    ],
)
def test_evaluator_refuses_a_dataset_without_the_tasks_ground_truth(scenes_root, datasets, message):
    with pytest.raises(ValueError, match=message):
        build_segmentation_evaluator(datasets)


# ---- Built-in models ----------------------------------------------------------------------------


def test_disabled_expedite_is_the_plain_model():
    images = [{"image": torch.rand(3, 96, 80) * 255}]
    outputs = {}
    for name, expedite in (("plain", None), ("disabled", False), ("enabled", True)):
        cfg = tiny_config()
        if expedite is None:
            cfg.model.backbone.expedite = None
        else:
            cfg.model.backbone.expedite.enabled = expedite
        torch.manual_seed(0)
        model = instantiate(cfg.model).eval()
        with torch.no_grad():
            [outputs[name]] = model(images)
    assert torch.equal(outputs["disabled"]["sem_seg"], outputs["plain"]["sem_seg"])
    assert torch.equal(outputs["disabled"]["panoptic_seg"][0], outputs["plain"]["panoptic_seg"][0])
    assert torch.equal(
        outputs["disabled"]["instances"].pred_masks, outputs["plain"]["instances"].pred_masks
    )
    assert not torch.equal(outputs["enabled"]["sem_seg"], outputs["plain"]["sem_seg"])


@pytest.mark.parametrize("expedite", [True, False])
def test_vitdet_backbone_mask2former_builds_and_runs(expedite):
    cfg = tiny_config(VITDET_TINY_CONFIG, [f"model.backbone.net.expedite.enabled={expedite}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert isinstance(model.backbone, Mask2FormerSimpleFeaturePyramid)
    assert isinstance(model.backbone.net, ExpeditedViT)
    assert model.backbone.net.expedite.enabled == expedite
    shapes = model.backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    # Parameter names stay SimpleFeaturePyramid's, so ViTDet checkpoints keep loading.
    assert any(k.startswith("backbone.simfp_2.") for k in model.state_dict())

    model.eval()
    with torch.no_grad():
        [result] = model([{"image": torch.rand(3, 128, 96) * 255, "height": 64, "width": 48}])
    assert result["sem_seg"].shape == (8, 64, 48)
    assert result["panoptic_seg"][0].shape == (64, 48)

    model.train()
    instances = Instances((128, 96))
    instances.gt_classes = torch.tensor([0, 7])
    masks = torch.zeros(2, 128, 96, dtype=torch.bool)
    masks[0, 20:60, 10:50] = True
    masks[1, 80:] = True
    instances.gt_masks = BitMasks(masks)
    losses = model([{"image": torch.rand(3, 128, 96) * 255, "instances": instances}])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.net.patch_embed.proj.weight.grad is not None


def test_feature_pyramid_refuses_a_top_block():
    with pytest.raises(ValueError, match="takes no top_block"):
        Mask2FormerSimpleFeaturePyramid(
            net=ExpeditedViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2),
            in_feature="last_feat",
            out_channels=16,
            scale_factors=(1.0,),
            top_block=nn.Identity(),
        )


# ---- train_net.py -------------------------------------------------------------------------------


def _import_train_net():
    """train_net.py is a script at the repo root, not part of an installed package."""
    return load_script(TRAIN_NET)


@pytest.fixture(scope="module")
def trained_dir(scenes_root, tmp_path_factory):
    """Output of two training iterations of the built-in Swin Mask2Former (token reduction off,
    as its config says to train)."""
    output_dir = tmp_path_factory.mktemp("mask2former_train")
    train_net = _import_train_net()
    arguments = [
        "--config-file", str(SWIN_TINY_CONFIG),
        f"train.output_dir={output_dir}",
        "train.max_iter=2",
        "train.log_period=1",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "model.backbone.expedite.enabled=False",
    ]
    train_net.main(train_net.default_argument_parser().parse_args(arguments))
    return output_dir


def test_training_iterations_have_finite_losses(trained_dir):
    records = [json.loads(line) for line in (trained_dir / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert (trained_dir / "model_final.pth").exists()


def test_train_net_eval_only_scores_the_trained_model(trained_dir, tmp_path):
    checkpoint = trained_dir / "model_final.pth"
    result = subprocess.run(
        [
            sys.executable, str(TRAIN_NET), "--eval-only",
            "--config-file", str(SWIN_TINY_CONFIG),
            f"train.output_dir={tmp_path}",
            f"train.init_checkpoint={checkpoint}",
            "dataloader.test.num_workers=0",
        ],
        cwd=REPO_ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((tmp_path / "metrics_eval.json").read_text())
    assert set(results) == {"panoptic_seg", "segm", "sem_seg"}
    assert math.isfinite(results["panoptic_seg"]["PQ"]) and math.isfinite(results["sem_seg"]["mIoU"])
    log = (tmp_path / "log.txt").read_text()
    assert "TokenClusteringLayer" in log  # evaluated with the config's token reduction on
    assert f"Evaluating the weights of {checkpoint}" in log
