"""A child process that stops when the process that started it is gone.

A trial process belongs to its `studyctl worker`, and a worker started by `studyctl run
--workers N` belongs to that launcher. Each runs in its own session (so one Ctrl-C reaches
the launcher only), which also means a kill -9 of the parent takes no child with it: the
child is reparented and, unwatched, trains on and takes more trials. Two operating-system
means tell the child at once, without polling:

* a pipe: the parent keeps the write end open for the child's life and passes the read end
  (`PARENT_FD_ENV`); the kernel closes the write end however the parent ends, and a thread
  of the child blocked on the read end sees end-of-file;
* on Linux, `prctl(PR_SET_PDEATHSIG)`: the kernel signals the child when its parent dies.

Both raise SIGHUP in the child, which `studyctl.signals` handles like a stop signal: a
trial in a Keras fit stops at the next batch end, a function objective at once, the trial
is recorded "interrupted: ..." with the real cause and queued for retry, and no further
trial is claimed. Before its handlers are installed (while it starts up), SIGHUP's default
action ends the child, which holds nothing yet. A `studyctl worker` started on its own
(by a cluster scheduler) has no such parent and is not armed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from studyctl.signals import set_hangup_reason

PARENT_FD_ENV = "STUDYCTL_PARENT_FD"
PARENT_PID_ENV = "STUDYCTL_PARENT_PID"
HANGUP = signal.SIGHUP
_PR_SET_PDEATHSIG = 1


@dataclass
class ChildLink:
    """The parent's side of the link: `env` and `pass_fds` go to `subprocess.Popen`;
    `started()` after it, `close()` once the child has exited."""

    env: dict[str, str]
    read_fd: int
    write_fd: int

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.read_fd,)

    def started(self) -> None:
        os.close(self.read_fd)  # the child holds its copy; ours would keep the pipe open

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.write_fd)


def link_child() -> ChildLink:
    """A new link for the next child (fds made by `os.pipe` are not inherited by any
    other child; `pass_fds` hands the read end to this one only)."""
    read_fd, write_fd = os.pipe()
    env = {PARENT_FD_ENV: str(read_fd), PARENT_PID_ENV: str(os.getpid())}
    return ChildLink(env=env, read_fd=read_fd, write_fd=write_fd)


def _set_parent_death_signal(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _wait_for_close(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 64):
            pass
    os.kill(os.getpid(), HANGUP)


def watch_parent(describe: Callable[[bool], str]) -> bool:
    """In the child, first thing: stop (SIGHUP) once the parent that linked it is gone.
    `describe(parent_gone)` words the recorded reason: the parent itself is gone, or (the
    parent still there) it forwarded SIGHUP because its own parent went away. Returns
    whether this process was started linked. The link's variables are removed from the
    environment so that this process's own children do not inherit them."""
    fd_text = os.environ.pop(PARENT_FD_ENV, None)
    pid_text = os.environ.pop(PARENT_PID_ENV, None)
    if fd_text is None or pid_text is None:
        return False
    parent = int(pid_text)
    set_hangup_reason(lambda: describe(os.getppid() != parent))
    _set_parent_death_signal(HANGUP)
    threading.Thread(
        target=_wait_for_close, args=(int(fd_text),), name="studyctl-parent", daemon=True
    ).start()
    if os.getppid() != parent:  # gone before the watch was armed
        os.kill(os.getpid(), HANGUP)
    return True
