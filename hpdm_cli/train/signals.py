"""SIGTERM and Ctrl-C during training: the loop checkpoints at the end of the step and stops; data workers ignore them."""

from __future__ import annotations

import signal

from ..workers import worker_init


class StopFlag:
    """Records SIGTERM / SIGINT so that the loop can checkpoint and stop at the end of a step."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:                                            # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:                      # a second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self.signum = signum

    def reassert(self) -> list[str]:
        """Re-install the handlers that something replaced since __enter__; the names of those signals.

        A library initialised inside the loop (compilation's worker pools, for instance) could install its
        own handler after the loop's, and a SIGTERM would then end the run without its checkpoint.
        """
        replaced = []
        for s in self._old:
            if signal.getsignal(s) != self._handle:
                signal.signal(s, self._handle)
                replaced.append(signal.Signals(s).name)
        return replaced

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def worker_ignores_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which checkpoints and stops cleanly.

    `timeout`, Slurm and torchrun deliver SIGTERM to the whole process group; a worker that died of
    it would make the main process fail before it could save its checkpoint.
    """
    worker_init()
