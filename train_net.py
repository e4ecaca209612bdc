#!/usr/bin/env python
"""Train or evaluate a detectron2 LazyConfig model, e.g. ViTDet with token reduction.

    python train_net.py --config-file CONFIG.py --eval-only train.init_checkpoint=MODEL.pth
    python train_net.py --config-file CONFIG.py --num-gpus 8 train.output_dir=OUT

Everything the user can get wrong is checked before any file is written or any worker started:
override keys (``+key=value`` adds one on purpose), the type and range of every token-reduction
setting, the settings against the model, the device, the dataset's files, the checkpoint file
(and, for evaluation, that its keys and shapes fit the model), and the output folder, which must
not hold another run's results (``--overwrite``, or
``--resume`` for training) and is locked while the run writes into it. Each mistake is one line on stderr and exit code 2.
Evaluation results are logged and, with --eval-only, saved to OUTPUT_DIR/metrics_eval.json;
there, predictions or metrics that are NaN are an error.
"""
import json
import logging
import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from expedite_vit.data import check_datasets_present, dataset_names
from expedite_vit.evaluation import FiniteOutputs, check_finite_metrics
from expedite_vit.runtime.checkpoint import load_checkpoint
from expedite_vit.runtime.cli import EXIT_RUN_FAILED, exit_on_user_error, load_checked_config
from expedite_vit.runtime.config import ConfigError, default_evaluator_output_dir, load_config, split_override
from expedite_vit.runtime.models import build_model
from expedite_vit.runtime.output import claim_output_folder

logger = logging.getLogger("detectron2.train_net")

EVAL_RESULTS_FILE = "metrics_eval.json"
PROG = "train_net.py"


def evaluate(cfg, model):
    """Run the test loader through ``model`` and return the evaluator's results."""
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def train(cfg, resume):
    model = instantiate(cfg.model).to(cfg.train.device)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    is_main = comm.is_main_process()
    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter) if is_main else None
    # EvalHook evaluates after the last iteration even with period 0; 0 here means never.
    eval_hook = (
        hooks.EvalHook(cfg.train.eval_period, lambda: evaluate(cfg, model))
        if cfg.train.eval_period > 0
        else None
    )
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if is_main else None,
            eval_hook,
            hooks.PeriodicWriter(writers, period=cfg.train.log_period) if is_main else None,
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # resume_or_load restored trainer.iter (the last finished iteration) from the checkpoint.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def eval_only(cfg, loaded_model=None):
    """Evaluate ``loaded_model`` (built and loaded by :func:`prepare`), or, in a worker process or
    with random weights, a model built here."""
    path = os.path.join(cfg.train.output_dir, EVAL_RESULTS_FILE)
    if comm.is_main_process() and os.path.exists(path):
        os.remove(path)  # --overwrite: a failed run must not leave the previous run's metrics
    model = loaded_model if loaded_model is not None else instantiate(cfg.model)
    if loaded_model is None and cfg.train.init_checkpoint:
        load_checkpoint(model, cfg.train.init_checkpoint)
    if cfg.train.init_checkpoint:
        logger.info("Evaluating the weights of %s (every key and shape checked)", cfg.train.init_checkpoint)
    else:
        logger.warning("--random-weights: evaluating UNTRAINED weights; the metrics mean nothing")
    model = model.to(cfg.train.device)
    logger.info("Model:\n%s", model)
    # NaN predictions or metrics are an error here, where they are the result; the periodic
    # evaluation during training only logs, as detectron2's does.
    results = evaluate(cfg, FiniteOutputs(model))
    if comm.is_main_process():
        check_finite_metrics(results)
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        logger.info("Evaluation results saved to %s", path)
    return results


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    default_evaluator_output_dir(cfg)
    default_setup(cfg, args)  # logger + log.txt, config.yaml, seed
    # default_setup routes only the "detectron2" and "fvcore" loggers to log.txt.
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="expedite_vit")
    return cfg


def main(args, loaded_model=None):
    """Per-process entry point; returns the evaluation results with --eval-only, else None.

    In a worker process a user error (e.g. NaN predictions) is one line and exit code 1, like
    in a single process, rather than a worker traceback.
    """
    with exit_on_user_error(PROG, code=EXIT_RUN_FAILED):
        cfg = setup(args)
        if args.eval_only:
            return eval_only(cfg, loaded_model)
        train(cfg, resume=args.resume)
    return None


def _checkpoint_given(opts) -> bool:
    return any(split_override(o)[0] == "train.init_checkpoint" for o in opts if "=" in o)


def prepare(args):
    """Check everything that can be checked without running, in the launching process.

    Returns:
        the config and, for --eval-only, the model with the checkpoint loaded (None for random
        weights).

    Raises:
        ConfigError, CheckpointFileError, DatasetMissingError: one line naming the problem;
        CheckpointMismatchError: the keys and shapes that do not fit.
    """
    if args.num_machines > 1 and args.dist_url == "auto":
        raise ConfigError(f"--num-machines {args.num_machines} needs --dist-url tcp://HOST:PORT of machine 0")
    cfg = load_checked_config(args.config_file, args.opts)
    check_datasets_present(dataset_names(cfg.dataloader.get("test" if args.eval_only else "train")))
    path = cfg.train.init_checkpoint or ""
    if args.random_weights and not args.eval_only:
        raise ConfigError("--random-weights goes with --eval-only; training starts from train.init_checkpoint")
    if args.random_weights:
        if _checkpoint_given(args.opts) and path:
            raise ConfigError("--random-weights evaluates untrained weights: drop train.init_checkpoint=, or the flag")
        cfg.train.init_checkpoint = ""
        return cfg, None
    if args.eval_only and not (_checkpoint_given(args.opts) and path):
        configured = f" (the config's own, {path!r}, is what training starts from)" if path else ""
        raise ConfigError(
            f"--eval-only needs trained weights: add train.init_checkpoint=PATH{configured}, "
            f"or pass --random-weights to evaluate untrained weights on purpose"
        )
    # Training starts from a partial checkpoint (e.g. ImageNet weights) that may be a download;
    # it is read there. Evaluation reads the file first (a broken file is named before a model is
    # built), then loads it, so that a checkpoint of another model is refused before the output
    # folder is written.
    if not args.eval_only:
        return cfg, None
    return cfg, build_model(cfg, "cpu")  # moved to train.device by the process that evaluates it


def argument_parser():
    parser = default_argument_parser()
    # detectron2's default is one fixed port per user, so two multi-process runs on one machine
    # collide (EADDRINUSE); "auto" takes a free port. Several machines need the address of machine 0.
    parser.set_defaults(dist_url="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in train.output_dir")
    parser.add_argument(
        "--random-weights", action="store_true", help="with --eval-only: evaluate untrained weights on purpose"
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    with exit_on_user_error(PROG):
        cfg, loaded_model = prepare(args)
        with claim_output_folder(cfg.train.output_dir, overwrite=args.overwrite, resume=args.resume):
            if args.random_weights:
                args.opts = [*args.opts, "train.init_checkpoint="]
            if args.num_gpus * args.num_machines > 1:
                loaded_model = None  # checked; each worker builds and loads its own
            try:
                launch(
                    main,
                    args.num_gpus,
                    num_machines=args.num_machines,
                    machine_rank=args.machine_rank,
                    dist_url=args.dist_url,
                    args=(args, loaded_model),
                )
            except ProcessExitedException:  # the worker has printed its error
                sys.exit(EXIT_RUN_FAILED)
