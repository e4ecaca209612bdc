"""Tests of train_net.py and expedite_vit.runtime.config on a tiny CPU ViTDet Mask R-CNN."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from PIL import Image

from expedite_vit.runtime.checkpoint import read_checkpoint
from expedite_vit.evaluation import FiniteOutputs, NonFiniteError, check_finite_metrics
from expedite_vit.runtime.output import LOCK_FILE, OutputFolderError, claim_output_folder
from expedite_vit.runtime.config import (
    ConfigError,
    check_device,
    check_model_settings,
    check_override_keys,
    load_config,
)
from conftest import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO_ROOT / "train_net.py"
TINY_CONFIG = REPO_ROOT / "tests" / "configs_tiny" / "tiny_vitdet_mask_rcnn.py"
TINY_COCO_ENV = "EXPEDITE_TINY_COCO_DIR"
IMAGE_SIZE = 128
CATEGORIES = [{"id": i, "name": f"class_{i}"} for i in (1, 2, 3)]


def _write_coco_split(dataset_dir, json_name, image_ids, rng):
    """Noise images with two flat-coloured rectangles each, and their COCO annotations."""
    images, annotations = [], []
    for image_id in image_ids:
        pixels = rng.integers(0, 60, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for slot in range(2):
            # One shape in each half of the image, so the two never overlap.
            x0, y0 = int(rng.integers(4, 40)) + 60 * slot, int(rng.integers(4, 80))
            side = int(rng.integers(16, 40))
            x1, y1 = min(x0 + side, IMAGE_SIZE - 1), min(y0 + side, IMAGE_SIZE - 1)
            pixels[y0:y1, x0:x1] = rng.integers(120, 255, size=3)
            polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORIES[(image_id + slot) % len(CATEGORIES)]["id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "segmentation": [polygon],
                    "iscrowd": 0,
                }
            )
        file_name = f"{image_id:04d}.png"
        Image.fromarray(pixels).save(dataset_dir / "images" / file_name)
        images.append(
            {"id": image_id, "file_name": file_name, "height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
    coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (dataset_dir / json_name).write_text(json.dumps(coco))


@pytest.fixture(scope="module")
def tiny_coco_dir(tmp_path_factory):
    """A synthetic COCO dataset in the layout the tiny config expects, named by the env var."""
    dataset_dir = tmp_path_factory.mktemp("tiny_coco")
    (dataset_dir / "images").mkdir()
    rng = np.random.default_rng(0)
    _write_coco_split(dataset_dir, "train.json", range(1, 5), rng)
    _write_coco_split(dataset_dir, "val.json", range(5, 8), rng)
    # Set for this process (in-process main()) and inherited by train_net.py subprocesses.
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(TINY_COCO_ENV, str(dataset_dir))
        yield dataset_dir


def run_train_net(*arguments):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, str(TRAIN_NET), "--config-file", str(TINY_CONFIG), *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


# ---- override validation --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cfg(tiny_coco_dir):
    return load_config(str(TINY_CONFIG))


@pytest.mark.parametrize(
    "override",
    [
        "train.max_iter=3",
        "model.backbone.net.depth=2",
        "model.backbone.net.window_block_indexes.1=3",  # list index
        "model.proposal_generator.anchor_generator.sizes.0.0=4",  # index into a nested list
        "dataloader.evaluator.output_dir=output/x",  # not set in the config; a COCOEvaluator kwarg
        "+train.new_option=1",  # '+' adds a key on purpose
    ],
)
def test_existing_override_keys_pass(tiny_cfg, override):
    check_override_keys(tiny_cfg, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.backbone.net.num_head=2",
            "unknown config key 'model.backbone.net.num_head' (did you mean 'num_heads'?)",
        ),
        (
            "model.backbon.net.depth=2",
            "'model' has no key 'backbon' (did you mean 'backbone'?)",
        ),
        ("dataloader.evaluator.ouput_dir=output/x", "(did you mean 'output_dir'?)"),
        ("model.backbone.net.window_block_indexes.2=1", "is a list of 2 items"),
        ("train.max_iter.steps=1", "'train.max_iter' is a value"),
        ("train.max_iter", "is not of the form key=value"),
    ],
)
def test_bad_override_keys_are_named(tiny_cfg, override, message):
    with pytest.raises(ConfigError) as error:
        check_override_keys(tiny_cfg, [override])
    assert message in str(error.value)


def test_unparsable_override_value_is_named_with_the_fix():
    # The shell leaves "~" unexpanded after "=", and hydra's grammar cannot read it.
    with pytest.raises(ConfigError) as error:
        load_config(str(TINY_CONFIG), ["train.init_checkpoint=~/weights.pth"])
    message = str(error.value)
    assert "cannot parse the override 'train.init_checkpoint=~/weights.pth'" in message
    assert "use $HOME" in message
    cfg = load_config(str(TINY_CONFIG), ["train.init_checkpoint='~/weights.pth'"])  # quoted: taken as is
    assert cfg.train.init_checkpoint == "~/weights.pth"


def test_load_config_applies_typed_values(tiny_coco_dir):
    cfg = load_config(
        str(TINY_CONFIG),
        [
            "train.max_iter=7",
            "optimizer.lr=0.5",
            "train.device=cpu",
            "model.backbone.net.window_block_indexes=[1,3]",
            "model.backbone.net.window_block_indexes.0=2",
            "+train.note=hello",
        ],
    )
    assert cfg.train.max_iter == 7 and isinstance(cfg.train.max_iter, int)
    assert cfg.optimizer.lr == 0.5
    assert cfg.train.device == "cpu"
    assert list(cfg.model.backbone.net.window_block_indexes) == [2, 3]
    assert cfg.train.note == "hello"


def test_unknown_key_makes_train_net_exit_with_its_name(tiny_coco_dir):
    result = run_train_net("--eval-only", "model.backbone.net.embed_dm=32")
    assert result.returncode != 0
    assert "unknown config key 'model.backbone.net.embed_dm'" in result.stderr
    assert "did you mean 'embed_dim'?" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_suggests_cpu():
    with pytest.raises(ConfigError, match="add the override train.device=cpu"):
        check_device("cuda")
    check_device("cpu")


# ---- training, resuming and evaluating ------------------------------------------------


def _import_train_net():
    """train_net.py is a script at the repo root, not part of an installed package."""
    return load_script(TRAIN_NET)


def _train_in_process(output_dir, max_iter, resume=False):
    train_net = _import_train_net()
    arguments = ["--config-file", str(TINY_CONFIG)] + (["--resume"] if resume else [])
    arguments += [
        f"train.output_dir={output_dir}",
        f"train.max_iter={max_iter}",
        "train.eval_period=0",  # evaluation is covered by the eval-only test
        "train.checkpointer.period=100",
    ]
    train_net.main(train_net.default_argument_parser().parse_args(arguments))


@pytest.fixture(scope="module")
def trained_dir(tiny_coco_dir, tmp_path_factory):
    """Output directory of a 2-iteration training run."""
    output_dir = tmp_path_factory.mktemp("train")
    _train_in_process(output_dir, max_iter=2)
    return output_dir


def test_training_writes_final_checkpoint(trained_dir):
    checkpoint = torch.load(trained_dir / "model_final.pth", weights_only=False)
    assert checkpoint["iteration"] == 1  # iterations 0 and 1 ran
    assert "optimizer" in checkpoint["trainer"]  # what --resume needs besides the weights
    assert (trained_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (trained_dir / "metrics.json").exists()


def test_resume_continues_from_checkpoint(trained_dir):
    _train_in_process(trained_dir, max_iter=3, resume=True)
    checkpoint = torch.load(trained_dir / "model_final.pth", weights_only=False)
    assert checkpoint["iteration"] == 2  # only iteration 2 ran after resuming
    assert "Starting training from iteration 2" in (trained_dir / "log.txt").read_text()


@pytest.mark.parametrize(
    "expedite", ["model.backbone.net.expedite.enabled=False", "model.backbone.net.expedite.expedit.grid=3"]
)
def test_eval_only_end_to_end(trained_dir, tmp_path, expedite):
    checkpoint = trained_dir / "model_final.pth"
    result = run_train_net(
        "--eval-only", f"train.output_dir={tmp_path}", f"train.init_checkpoint={checkpoint}", expedite
    )
    assert result.returncode == 0, result.stderr[-4000:]
    expected_layer = "" if "False" in expedite else "TokenClusteringLayer(window=4, grid=(3, 3)"
    assert expected_layer in (tmp_path / "log.txt").read_text()  # the model is printed there

    results = json.loads((tmp_path / "metrics_eval.json").read_text())
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(results[task])
        assert f"copypaste: Task: {task}" in result.stdout  # print_csv_format, for scripts

    saved_cfg = LazyConfig.load(str(tmp_path / "config.yaml"))
    assert saved_cfg.train.init_checkpoint == str(checkpoint)
    assert saved_cfg.dataloader.evaluator.output_dir == str(tmp_path)  # defaulted, and saved
    log = (tmp_path / "log.txt").read_text()
    assert "Total inference time" in log
    assert f"Evaluating the weights of {checkpoint} (every key and shape checked)" in log
    # The evaluator wrote its predictions next to the log (output_dir defaulted).
    assert (tmp_path / "coco_instances_results.json").exists()


# ---- settings checked when the config is loaded ------------------------------------------

EXPEDITE = "model.backbone.net.expedite"


@pytest.mark.parametrize(
    "override, message",
    [
        ("enabled=no", "enabled='no' (str) is not allowed"),
        ("enabled=off", "enabled='off' (str) is not allowed"),
        ("expedit.cluster_temperature=abc", "expedit.cluster_temperature='abc' (str) is not allowed"),
        ("expedit.grid=4.0", "expedit.grid=4.0 (float) is not allowed"),
        ("location=true", "location=True (bool) is not allowed"),
        ("expedit.reconstruct_temperature=inf", "expedit.reconstruct_temperature=inf (float) is not allowed"),
        ("expedit.cluster_temperature=inf", "expedit.cluster_temperature=inf (float) is not allowed"),
        ("expedit.k=0", "expedit.k=0 (int) is not allowed"),
    ],
)
def test_bad_settings_are_refused_when_the_config_is_loaded(tiny_coco_dir, override, message):
    with pytest.raises(ConfigError) as error:
        load_config(str(TINY_CONFIG), [f"{EXPEDITE}.{override}"])
    text = str(error.value)
    assert text.startswith(f"{EXPEDITE}.") and message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    "override, message",
    [
        ("location=9", f"{EXPEDITE}.location=9"),  # the tiny ViT has 4 blocks
        ("expedit.grid=5", f"{EXPEDITE}.expedit.grid"),  # its windows are 4x4
    ],
)
def test_settings_that_do_not_fit_the_host_are_refused_before_building(tiny_coco_dir, override, message):
    cfg = load_config(str(TINY_CONFIG), [f"{EXPEDITE}.{override}"])
    with pytest.raises(ConfigError) as error:
        check_model_settings(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_setting_is_one_line_and_writes_nothing(tiny_coco_dir, tmp_path):
    output = tmp_path / "run"
    result = run_train_net("--eval-only", f"train.output_dir={output}", f"{EXPEDITE}.enabled=no")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"train_net.py: error: {EXPEDITE}.enabled='no' (str) is not allowed: it must be True or False "
        "(a bool; strings such as 'no' or 'true' are refused)"
    ]
    assert not output.exists()


def test_missing_dataset_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(TINY_COCO_ENV, str(tmp_path / "nowhere"))
    output = tmp_path / "run"
    result = run_train_net("--eval-only", "--random-weights", f"train.output_dir={output}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    missing = tmp_path / "nowhere" / "val.json"
    assert lines[0].startswith(f"train_net.py: error: dataset 'tiny_vitdet_coco_val': its json_file {missing} does not exist")
    assert not output.exists()


def test_settings_too_large_for_the_input_are_one_line(tiny_coco_dir, tmp_path):
    """Found only when an image arrives (its map is smaller than the gathering grid): one line,
    exit code 1, no traceback."""
    result = run_train_net(
        "--eval-only", "--random-weights", f"train.output_dir={tmp_path / 'run'}",
        f"{EXPEDITE}.method=itpn", f"{EXPEDITE}.itpn.gather=99",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "train_net.py: error: expedite.itpn.gather=99: 99x99 gathering tokens are more than the global block's"
    )


def test_dataset_check_names_the_dataset_the_path_and_how_to_make_it(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from expedite_vit.data import DatasetMissingError, check_datasets_present, register_expedite_scenes

    with pytest.raises(DatasetMissingError, match="dataset 'no_such_dataset' is not registered"):
        check_datasets_present("no_such_dataset")
    root = tmp_path / "scenes"
    try:
        register_expedite_scenes(str(root))
        with pytest.raises(DatasetMissingError) as error:
            check_datasets_present(["expedite_scenes_val_panoptic"])
        assert str(root / "annotations") in str(error.value)
        assert f"python tools/make_builtin_dataset.py --root {root}" in str(error.value)
        # The loader, reached without the check, says the same in one line.
        with pytest.raises(DatasetMissingError, match="does not exist; create it with"):
            DatasetCatalog.get("expedite_scenes_val")
        assert MetadataCatalog.get("expedite_scenes_val").missing_hint in str(error.value)
    finally:
        register_expedite_scenes()  # the default root again, for the other tests


def test_bad_setting_leaves_the_previous_runs_config(trained_dir, tmp_path):
    output = tmp_path / "run"
    checkpoint = trained_dir / "model_final.pth"
    first = run_train_net("--eval-only", f"train.output_dir={output}", f"train.init_checkpoint={checkpoint}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    again = run_train_net(
        "--eval-only", "--overwrite", f"train.output_dir={output}", f"train.init_checkpoint={checkpoint}",
        f"{EXPEDITE}.expedit.grid=4.0",
    )
    assert again.returncode == 2 and f"{EXPEDITE}.expedit.grid=4.0 (float)" in again.stderr
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before


# ---- checkpoints ------------------------------------------------------------------------


def test_eval_only_without_checkpoint_is_refused(tiny_coco_dir, tmp_path):
    result = run_train_net("--eval-only", f"train.output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "--eval-only needs trained weights: add train.init_checkpoint=PATH" in result.stderr
    assert "--random-weights" in result.stderr
    assert not (tmp_path / "run").exists()


def test_random_weights_on_purpose(tiny_coco_dir, tmp_path):
    result = run_train_net("--eval-only", "--random-weights", f"train.output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluating UNTRAINED weights" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("damage", ["truncated", "not_a_checkpoint", "missing"])
def test_broken_checkpoint_is_named_before_the_model_is_built(trained_dir, tmp_path, damage):
    path = tmp_path / "weights.pth"
    data = (trained_dir / "model_final.pth").read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not_a_checkpoint":
        path.write_bytes(b"not a checkpoint\n" * 100)
    result = run_train_net("--eval-only", f"train.output_dir={tmp_path / 'run'}", f"train.init_checkpoint={path}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], result.stderr[-3000:]
    expected = {"truncated": "truncated or corrupt", "not_a_checkpoint": "not a PyTorch or detectron2 checkpoint",
                "missing": "does not exist"}[damage]
    assert expected in lines[0]
    assert "weights_only" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before building the model or writing anything


@pytest.mark.parametrize("change", ["key_missing", "shape_differs"])
def test_checkpoint_of_another_model_is_refused_before_writing(trained_dir, tmp_path, change):
    checkpoint = torch.load(trained_dir / "model_final.pth", weights_only=False)
    weights = checkpoint["model"]
    name = next(k for k in sorted(weights) if k.endswith("patch_embed.proj.weight"))
    if change == "key_missing":
        del weights[name]
    else:
        weights[name] = torch.zeros(1, *weights[name].shape[1:])
    path = tmp_path / "other.pth"
    torch.save({"model": weights}, path)
    result = run_train_net("--eval-only", f"train.output_dir={tmp_path / 'run'}", f"train.init_checkpoint={path}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "train_net.py: error: the checkpoint does not fit this model" in result.stderr
    listing = "missing in the checkpoint (1)" if change == "key_missing" else "of a different shape (1)"
    assert listing in result.stderr and name in result.stderr
    assert not (tmp_path / "run").exists()


def test_read_checkpoint_keeps_matching_heuristics_query(tmp_path):
    # The preloaded checkpoint must carry what detectron2 reads from the URL query.
    path = tmp_path / "w.pth"
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    assert read_checkpoint(f"{path}?matching_heuristics=True")["matching_heuristics"] is True
    assert "matching_heuristics" not in read_checkpoint(str(path))


# ---- output folders ----------------------------------------------------------------------


def test_output_folder_with_results_is_refused_unless_overwrite(trained_dir, tmp_path):
    checkpoint = trained_dir / "model_final.pth"
    (tmp_path / "metrics_eval.json").write_text("{}")
    refused = run_train_net("--eval-only", f"train.output_dir={tmp_path}", f"train.init_checkpoint={checkpoint}")
    assert refused.returncode == 2
    assert "already holds results (metrics_eval.json); pass --overwrite" in refused.stderr
    assert (tmp_path / "metrics_eval.json").read_text() == "{}"
    replaced = run_train_net(
        "--eval-only", "--overwrite", f"train.output_dir={tmp_path}", f"train.init_checkpoint={checkpoint}"
    )
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "bbox" in json.loads((tmp_path / "metrics_eval.json").read_text())
    assert not (tmp_path / LOCK_FILE).exists()  # released


def test_concurrent_run_is_refused_and_stale_lock_replaced(tmp_path):
    (tmp_path / LOCK_FILE).write_text(str(os.getpid()))  # a live process holds the folder
    with pytest.raises(OutputFolderError, match=f"another run \\(process {os.getpid()}\\) is writing"):
        with claim_output_folder(str(tmp_path)):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(dead.stdout.strip())  # that process has ended
    with claim_output_folder(str(tmp_path)) as folder:
        assert (folder / LOCK_FILE).read_text() == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()


# ---- NaN is an error ---------------------------------------------------------------------


def test_nan_predictions_are_an_error():
    from detectron2.structures import Boxes, Instances

    instances = Instances((8, 8), pred_boxes=Boxes(torch.tensor([[0.0, 0.0, float("nan"), 2.0]])),
                          scores=torch.tensor([0.5]))
    model = FiniteOutputs(lambda inputs: [{"instances": instances}])
    with pytest.raises(NonFiniteError, match="predictions for a.png hold NaN or inf \\(instances.pred_boxes\\)"):
        model([{"file_name": "a.png"}])


def test_nan_metrics_are_an_error_except_where_evaluators_leave_nan():
    check_finite_metrics({"bbox": {"AP": 1.0, "APs": float("nan"), "AP-cat": float("nan")}})
    with pytest.raises(NonFiniteError, match="metrics segm/AP are NaN"):
        check_finite_metrics({"bbox": {"AP": 1.0}, "segm": {"AP": float("nan")}})


# ---- several processes ---------------------------------------------------------------------


def test_two_processes_equal_one_and_report_errors_the_same(trained_dir, tmp_path):
    checkpoint = trained_dir / "model_final.pth"
    one = run_train_net("--eval-only", f"train.output_dir={tmp_path / 'one'}", f"train.init_checkpoint={checkpoint}")
    two = run_train_net("--eval-only", "--num-gpus", "2", f"train.output_dir={tmp_path / 'two'}",
                        f"train.init_checkpoint={checkpoint}")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "one" / "metrics_eval.json").read_text()) == json.loads(
        (tmp_path / "two" / "metrics_eval.json").read_text()
    )
    bad = run_train_net("--eval-only", "--num-gpus", "2", f"train.output_dir={tmp_path / 'bad'}",
                        f"train.init_checkpoint={checkpoint}", f"{EXPEDITE}.enabled=no")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [line for line in bad.stderr.strip().splitlines() if "error:" in line]
    assert len(bad.stderr.strip().splitlines()) == 1


def test_parallel_multi_process_runs_take_free_ports(trained_dir, tmp_path):
    # detectron2's default --dist-url is one fixed port per user: the second of two overlapping
    # runs failed with EADDRINUSE.
    checkpoint = trained_dir / "model_final.pth"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    runs = [
        subprocess.Popen(
            [sys.executable, str(TRAIN_NET), "--config-file", str(TINY_CONFIG), "--eval-only", "--num-gpus", "2",
             f"train.output_dir={tmp_path / str(index)}", f"train.init_checkpoint={checkpoint}"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for index in range(2)
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stderr[-3000:]
    assert (tmp_path / "0" / "metrics_eval.json").read_text() == (tmp_path / "1" / "metrics_eval.json").read_text()


def test_several_machines_need_the_address_of_machine_0(tmp_path):
    result = run_train_net("--eval-only", "--num-machines", "2", f"train.output_dir={tmp_path / 'run'}",
                           "train.init_checkpoint=weights.pth")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "train_net.py: error: --num-machines 2 needs --dist-url tcp://HOST:PORT of machine 0"
    ]
    assert not (tmp_path / "run").exists()


def test_random_weights_goes_with_eval_only(tiny_coco_dir):
    # Training with --random-weights would silently drop the config's init checkpoint.
    train_net = _import_train_net()
    args = train_net.argument_parser().parse_args(["--config-file", str(TINY_CONFIG), "--random-weights"])
    with pytest.raises(ConfigError, match="--random-weights goes with --eval-only"):
        train_net.prepare(args)
