"""Child processes that never outlive the process that started them.

``dies_with_us()`` gives a ``preexec_fn``: between fork and exec it asks Linux to send the
child SIGTERM when its parent goes, however the parent goes (SIGKILL, a crash), so a killed
``retrain up`` leaves no trainer or redis-server behind. The signal comes when the *thread*
that started the child ends, so start children from a thread that outlives them.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def dies_with_us() -> Callable[[], None]:
    parent = os.getpid()

    def in_the_child() -> None:  # between fork and exec: no locks, no logging
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return in_the_child
