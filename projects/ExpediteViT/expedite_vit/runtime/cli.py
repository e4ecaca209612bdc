"""What the entry points (``train_net.py``, ``demo/demo.py``, ``tools/benchmark.py``) do alike:
turn a mistake of the user's into one line on stderr and an exit code, not a traceback."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator

from typing import Optional, Sequence

from omegaconf import DictConfig

from expedite import InputSizeError

from ..data.availability import DatasetMissingError
from ..evaluation.finite import NonFiniteError
from .checkpoint import CheckpointFileError, CheckpointMismatchError
from .config import ConfigError, check_device, check_model_settings, load_config
from .inputs import ImageInputError
from .output import OutputFolderError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_RUN_FAILED",
    "USER_ERRORS",
    "exit_on_user_error",
    "load_checked_config",
    "tool_parser",
]

# argparse's code for a bad command line; the same for any input refused before the run starts.
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1

# Errors whose message is the whole story: the setting, file or value, and what to do.
USER_ERRORS = (
    ConfigError,
    CheckpointFileError,
    CheckpointMismatchError,
    OutputFolderError,
    NonFiniteError,
    ImageInputError,
    DatasetMissingError,
    InputSizeError,
)


def tool_parser(script: str, doc: str, dataset_help: str = "") -> argparse.ArgumentParser:
    """The command line every entry point starts with: its name and first paragraph, and
    ``--config-file``; with ``dataset_help``, also the image source shared by the measuring tools
    (``--input`` files or globs, or a registered ``--dataset``, photographs without either)."""
    parser = argparse.ArgumentParser(
        prog=os.path.basename(script),
        description=doc.strip().split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig of the model")
    if dataset_help:
        images = parser.add_mutually_exclusive_group()
        images.add_argument("--input", nargs="+", default=[], help="image files or globs (default: photographs)")
        images.add_argument("--dataset", help=dataset_help)
    return parser


def load_checked_config(
    config_file: str, overrides: Sequence[str], device: Optional[str] = None, device_setting: str = "--device",
    methods: Sequence[str] = (),
) -> DictConfig:
    """The start-up every entry point shares, before any model is built or file written: the
    config with its overrides (keys; type and range of every token-reduction setting), those
    settings against the model they go into, and the device (``device``, given as
    ``device_setting``, or the config's ``train.device``). ``methods``: methods the tool runs
    besides the config's, whose settings may be overridden too.

    Raises:
        ConfigError: one line naming the key or flag, the value and what is allowed.
    """
    cfg = load_config(config_file, overrides, methods=methods)
    check_model_settings(cfg)
    if device is None:
        check_device(cfg.train.device)
    else:
        check_device(device, device_setting)
    return cfg


@contextlib.contextmanager
def exit_on_user_error(prog: str, code: int = EXIT_BAD_INPUT) -> Iterator[None]:
    """Run the block; a :data:`USER_ERRORS` error ends the process with ``prog: error: ...``."""
    try:
        yield
    except USER_ERRORS as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_RUN_FAILED if isinstance(error, NonFiniteError) else code)
