"""One service per data directory: an exclusive lock on DATA_DIR/neardup.lock for the process's life.

Two services writing one store would each keep their own live index and answer differently;
the second one exits at start-up instead. The lock is released by the kernel when the process
ends, however it ends, so a crash never leaves a stale lock behind. (`neardup index rebuild`
opens the store read-only and does not take it.)
"""

import fcntl
import os
from pathlib import Path

LOCK_FILE = "neardup.lock"


class DataDirInUse(RuntimeError):
    pass


class DataDirLock:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise DataDirInUse(
                f"another neardup service (pid {holder}) is using {data_dir}: stop it, or serve with another --data-dir"
            ) from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        self._file.close()
