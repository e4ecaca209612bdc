#!/usr/bin/env python
"""Train or evaluate a detectron2 LazyConfig model, e.g. ViTDet with token reduction.

    python train_net.py --config-file CONFIG.py --eval-only train.init_checkpoint=MODEL.pth
    python train_net.py --config-file CONFIG.py --num-gpus 8 train.output_dir=OUT

Override keys that are not in the config are refused (``+key=value`` adds one on purpose).
Evaluation results are logged and, with --eval-only, saved to OUTPUT_DIR/metrics_eval.json.
"""
import json
import logging
import os

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

from expedite_vit.checkpoint import load_checkpoint
from expedite_vit.tools.lazy_config import (
    ConfigError,
    check_device,
    default_evaluator_output_dir,
    load_config,
)

logger = logging.getLogger("detectron2.train_net")

EVAL_RESULTS_FILE = "metrics_eval.json"


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


def eval_only(cfg):
    model = instantiate(cfg.model).to(cfg.train.device)
    logger.info("Model:\n%s", model)
    load_checkpoint(model, cfg.train.init_checkpoint)
    results = evaluate(cfg, model)
    if comm.is_main_process():
        path = os.path.join(cfg.train.output_dir, EVAL_RESULTS_FILE)
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


def main(args):
    """Per-process entry point; returns the evaluation results with --eval-only, else None."""
    cfg = setup(args)
    if args.eval_only:
        return eval_only(cfg)
    train(cfg, resume=args.resume)
    return None


def check_args(parser, args):
    """Report config errors once, before worker processes are spawned."""
    try:
        check_device(load_config(args.config_file, args.opts).train.device)
    except ConfigError as error:
        parser.error(str(error))


if __name__ == "__main__":
    parser = default_argument_parser()
    args = parser.parse_args()
    check_args(parser, args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
