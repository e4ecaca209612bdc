"""Output folders that one run owns: refused when they hold another run's results, unless asked,
and locked while a run writes into them, so two runs never leave a mixed folder."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

__all__ = ["LOCK_FILE", "OutputFolderError", "claim_output_folder"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".expedite_run.lock"


class OutputFolderError(ValueError):
    """An output folder that this run may not write into; the message says why and what to do."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def _take_lock(lock: Path) -> None:
    """Create ``lock`` holding this process id; a lock left by a process that died is replaced."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and _process_alive(owner):
                raise OutputFolderError(
                    f"another run (process {owner}) is writing into {str(lock.parent)!r}; wait for "
                    f"it to finish or choose another train.output_dir"
                ) from None
            logger.warning("Removing the lock of a run that ended without releasing it: %s", lock)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return
    raise OutputFolderError(f"cannot lock the output folder {str(lock.parent)!r}: {lock} keeps reappearing")


@contextlib.contextmanager
def claim_output_folder(folder: str, *, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Hold ``folder`` for the duration of one run.

    The folder is created if needed and locked (a ``.expedite_run.lock`` file holding this
    process id) against concurrent runs. A folder that already holds files (another run's
    config, log, metrics or predictions) is refused unless ``overwrite`` (replace them) or
    ``resume`` (training continues from them) is set.

    Raises:
        OutputFolderError: before anything is written into the folder.
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"output folder {folder!r} is a file; choose another train.output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(f"cannot create output folder {folder!r}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise OutputFolderError(f"output folder {folder!r} is not writable")
    lock = path / LOCK_FILE
    _take_lock(lock)
    try:
        existing = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)
        if existing and not (overwrite or resume):
            shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
            raise OutputFolderError(
                f"output folder {folder!r} already holds results ({shown}); pass --overwrite to "
                f"replace them, --resume to continue training, or choose another train.output_dir"
            )
        yield path
    finally:
        lock.unlink(missing_ok=True)
