"""Stopping a worker run in a thread, and saying where it hung when it does not stop."""

from __future__ import annotations

import sys
import threading
import traceback


def join_or_explain(thread: threading.Thread, timeout: float = 60) -> None:
    """Join `thread`; if it is still alive after `timeout` seconds, fail with the stack of every live thread, so a
    worker that does not stop says where it is stuck instead of leaking into the tests that follow."""
    thread.join(timeout)
    if not thread.is_alive():
        return
    frames = sys._current_frames()
    stacks = []
    for live in threading.enumerate():
        frame = frames.get(live.ident or -1)
        if live is threading.current_thread() or frame is None:
            continue
        stacks.append(f"--- {live.name}\n{''.join(traceback.format_stack(frame))}")
    raise AssertionError(f"{thread.name} did not stop within {timeout:.0f} s; live threads:\n" + "\n".join(stacks))
