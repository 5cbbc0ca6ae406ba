"""A worker's trial processes as handles, and the warm spare that hides a recycle.

Starting a trial process costs Python's, Optuna's and TensorFlow's imports, the
objective file and its data (seconds). A worker that recycles its trial process every
`[worker] trials_per_process` trials would pay that between two trials each time. With
`[worker] prewarm` on (the default) the worker starts the successor as a *spare* while the
current process trains its last trial (the current process says so through a pipe, the
*notice*), and hands over as soon as the current one exits (the *go* pipe).

A spare in standby holds nothing: it has opened the storage, imported the framework, its
objective and (on a machine without GPUs) the data, but it has not built a strategy or
touched a GPU, holds no claim and no trial. It waits on the go pipe:

* a line of JSON (``trials_done``, ``timeout``): it becomes the worker's trial process;
* end of file (the worker does not need it, or the worker died): it exits 0 at once;
* a stop signal, or its worker's death (`execution.parent`): the default action ends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studyctl.execution.parent import ChildLink, link_child

GO_FD_ENV = "STUDYCTL_GO_FD"
NOTICE_FD_ENV = "STUDYCTL_NOTICE_FD"
LAST_TRIAL = b"L"
# How long a dismissed spare gets to exit on its own before it is killed.
DISMISS_WAIT_S = 10.0


@dataclass
class TrialProcessHandle:
    """The worker's side of one trial process: its `Popen`, the parent link, the go pipe's
    write end (a spare only) and the notice pipe's read end."""

    popen: subprocess.Popen[bytes]
    link: ChildLink
    notice_fd: int | None
    go_fd: int | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def go(self, trials_done: int, timeout: float | None) -> None:
        """Tell a spare to become the trial process (nothing for a process started live)."""
        if self.go_fd is None:
            return
        message = json.dumps({"trials_done": trials_done, "timeout": timeout}) + "\n"
        with contextlib.suppress(OSError):  # it died in standby: its exit code says how
            os.write(self.go_fd, message.encode())
        self._close_go()

    def wait_for_last_trial(self) -> bool:
        """Block until the process starts its last trial (True) or exits (False)."""
        if self.notice_fd is None:
            return False
        try:
            while True:
                ready, _, _ = select.select([self.notice_fd], [], [])
                if ready:
                    return os.read(self.notice_fd, 1) == LAST_TRIAL
        except OSError:
            return False

    def wait(self) -> int:
        return self.popen.wait()

    def send_signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def dismiss(self) -> None:
        """A spare no longer needed: close its go pipe (it exits 0), reap it, kill it if it
        does not go (a process never told to go has claimed nothing)."""
        self._close_go()
        try:
            self.popen.wait(timeout=DISMISS_WAIT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.close()

    def close(self) -> None:
        self._close_go()
        self.link.close()
        if self.notice_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.notice_fd)
            self.notice_fd = None

    def _close_go(self) -> None:
        if self.go_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.go_fd)
            self.go_fd = None


def start_trial_process(
    cmd: list[str], env: dict[str, str], *, standby: bool
) -> TrialProcessHandle:
    """Start a trial process linked to this one (`execution.parent`), with a notice pipe;
    `standby`: as a spare that waits for `go`."""
    link = link_child()  # the child stops at once if this process dies
    notice_r, notice_w = os.pipe()
    child_env = {**env, **link.env, NOTICE_FD_ENV: str(notice_w)}
    fds = [*link.pass_fds, notice_w]
    go_r = go_w = None
    if standby:
        go_r, go_w = os.pipe()
        child_env[GO_FD_ENV] = str(go_r)
        fds.append(go_r)
    try:
        popen = subprocess.Popen(cmd, env=child_env, start_new_session=True, pass_fds=fds)
    except BaseException:
        for fd in (notice_r, notice_w, go_r, go_w):
            if fd is not None:
                os.close(fd)
        link.close()
        raise
    finally:
        link.started()
    os.close(notice_w)  # the child holds its copy: end of file once it exits
    if go_r is not None:
        os.close(go_r)
    return TrialProcessHandle(popen=popen, link=link, notice_fd=notice_r, go_fd=go_w)


# The trial process's side ---------------------------------------------------------------


def notice_sender() -> Callable[[], None] | None:
    """In a trial process: the function that tells its worker "my last trial starts now",
    or None when the worker did not ask (a worker without pre-warm, `studyctl run`)."""
    text = os.environ.pop(NOTICE_FD_ENV, None)
    if text is None:
        return None
    fd = int(text)

    def send() -> None:
        with contextlib.suppress(OSError):
            os.write(fd, LAST_TRIAL)

    return send


def standby_fd() -> int | None:
    """In a trial process: the go pipe's read end when it was started as a spare. A stop
    signal before `go` ends it by the default action (it holds nothing yet)."""
    text = os.environ.pop(GO_FD_ENV, None)
    if text is None:
        return None
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return int(text)


def wait_for_go(fd: int) -> dict[str, Any] | None:
    """Block until the worker says go (its message) or does not need this spare (None).
    Python's SIGINT handling comes back for the trials."""
    data = b""
    with contextlib.suppress(OSError):
        while not data.endswith(b"\n"):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    with contextlib.suppress(OSError):
        os.close(fd)
    if not data.endswith(b"\n"):
        return None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    message: dict[str, Any] = json.loads(data)
    return message
