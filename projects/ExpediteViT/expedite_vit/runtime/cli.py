"""What the entry points (``train_net.py``, ``demo/demo.py``, ``tools/benchmark.py``) do alike:
turn a mistake of the user's into one line on stderr and an exit code, not a traceback."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from ..checkpoint import CheckpointFileError, CheckpointMismatchError
from ..evaluation.finite import NonFiniteError
from ..tools.lazy_config import ConfigError
from .output import OutputFolderError

__all__ = ["EXIT_BAD_INPUT", "EXIT_RUN_FAILED", "USER_ERRORS", "exit_on_user_error"]

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
)


@contextlib.contextmanager
def exit_on_user_error(prog: str, code: int = EXIT_BAD_INPUT) -> Iterator[None]:
    """Run the block; a :data:`USER_ERRORS` error ends the process with ``prog: error: ...``."""
    try:
        yield
    except USER_ERRORS as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_RUN_FAILED if isinstance(error, NonFiniteError) else code)
