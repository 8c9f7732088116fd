"""A classroom on one server: each browser session and API client has its own state, and
training runs wait in one FIFO queue.

    sessions = Sessions(default_set="demo", taught_root=teach_dir / "taught")
    s = sessions.get(request.session_hash)     # created on first use; its own active set
    queue = TrainQueue(slots=1, start=launch)  # launch(ticket) -> a started teach.TeachJob
    ticket = queue.submit(Ticket(s, folder, epochs=1))
    queue.snapshot(ticket)  # {"status": "queued", "position": 2, "estimate_s": ...} or the job's
    queue.stop(s.id)        # only this session's ticket; a queued one is dropped

Nothing here imports gradio or torch.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from mmt_core.errors import UserError

from .teach import safe_name


def env_int(name: str, default: int) -> int:
    """An integer setting from the environment (default when unset or not a number)."""
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def train_slots() -> int:
    """MMT_TRAIN_SLOTS, else 1 on a machine with at most 4 cores (a run uses every core it can
    get; two at once on 2 cores each take twice as long and the page slows for everyone), else
    one per 4 cores."""
    return max(1, env_int("MMT_TRAIN_SLOTS", max(1, (os.cpu_count() or 1) // 4)))


# A taught run's length before any run has finished on this server: benchmarks/bench_teach.py's
# 5 classes x 6 clips took 42 s with 2 threads on the idle 2-core machine; the app trains with
# one thread beside the page's requests, so about twice that.
FIRST_RUN_GUESS_S = 90.0


@dataclasses.dataclass
class Session:
    """One browser tab (gradio's session_hash) or one gradio_client Client."""
    id: str  # a safe folder name (teach.ClipStore.folder's rule)
    active: str  # the model set this session's tabs and endpoints answer with
    taught_dir: Path  # its own taught set (written by its Teach runs or a restored zip)
    last_seen: float = dataclasses.field(default_factory=time.time)
    ended: bool = False  # set when the session leaves: a late job end writes nothing
    last_ticket: "Ticket | None" = None  # its latest training run (the page shows how it went)


class Sessions:
    """session id → Session; ids are made folder-safe once, here."""

    def __init__(self, default_set: str, taught_root: Path):
        self.default_set = default_set
        self.taught_root = Path(taught_root)
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    @staticmethod
    def safe_id(session: str | None) -> str:
        return safe_name(session, "local")

    def get(self, session: str | None) -> Session:
        sid = self.safe_id(session)
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                s = self._by_id[sid] = Session(sid, self.default_set, self.taught_root / sid)
            s.last_seen = time.time()
            return s

    def pop(self, session: str | None) -> Session | None:
        with self._lock:
            s = self._by_id.pop(self.safe_id(session), None)
        if s is not None:
            s.ended = True
        return s

    def idle(self, older_than_s: float, keep=("local",)) -> list[str]:
        """Ids of sessions not seen for `older_than_s` seconds."""
        now = time.time()
        with self._lock:
            return [sid for sid, s in self._by_id.items()
                    if sid not in keep and now - s.last_seen > older_than_s]

    def __len__(self) -> int:
        return len(self._by_id)


@dataclasses.dataclass(eq=False)
class Ticket:
    """A session's training run: queued, then running (job set), then ended."""
    session: Session
    folder: Path  # the class folders to train on
    epochs: int | None = None
    status: str = "queued"  # queued | running | done | stopped | failed
    job: object = None  # the teach.TeachJob once started
    error: str = ""
    queued_at: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


class TrainQueue:
    """At most `slots` runs at once, the rest waiting in submission order (FIFO); one queued
    or running ticket per session. `start(ticket)` starts a run and returns its TeachJob (a
    thread); a watcher thread per run frees the slot when it ends and calls `ended(ticket)`."""

    def __init__(self, slots: int, start: Callable[[Ticket], object],
                 ended: Callable[[Ticket], None] | None = None):
        self.slots = max(1, int(slots))
        self._start, self._ended = start, ended
        self._waiting: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._durations: list[float] = []  # seconds of finished runs: the estimate
        self._lock = threading.Lock()

    # ---- what a session does
    def submit(self, ticket: Ticket) -> Ticket:
        with self._lock:
            mine = self.ticket_of(ticket.session.id, locked=True)
            if mine is not None:
                raise UserError(f"your training run is already {mine.status}; wait for it or "
                                "stop it first")
            self._waiting.append(ticket)
            ticket.session.last_ticket = ticket
        self._dispatch()
        return ticket

    def stop(self, session_id: str) -> str:
        """Stop this session's run: a queued one leaves the queue at once, a running one stops
        after its current step. Returns what happened, in words."""
        t = self.drop(session_id)
        if t is None:
            return "Nothing of yours is training or waiting."
        if t.job is None and t.status == "stopped":  # it never started
            return "Removed your run from the queue."
        return "Stopping after the current step…"

    def ticket_of(self, session_id: str, *, locked: bool = False) -> Ticket | None:
        """The session's queued or running ticket, or None."""
        def find():
            return next((t for t in (*self._running, *self._waiting)
                         if t.session.id == session_id), None)
        if locked:
            return find()
        with self._lock:
            return find()

    # ---- what the page shows
    def typical_s(self) -> float:
        """The mean length of the last 5 finished runs (FIRST_RUN_GUESS_S before any)."""
        last = self._durations[-5:]
        return sum(last) / len(last) if last else FIRST_RUN_GUESS_S

    def snapshot(self, ticket: Ticket) -> dict:
        """A queued ticket: {"status": "queued", "position" (1 = next), "waiting", "running",
        "estimate_s" (until it starts)}; else its job's snapshot plus "status"."""
        with self._lock:
            if ticket.status == "queued":
                pos = list(self._waiting).index(ticket) + 1 if ticket in self._waiting else 1
                typical = self.typical_s()
                now = time.time()
                # the running runs' remaining time, then whole runs ahead, `slots` at a time
                left = sorted(max(0.0, typical - (now - (t.started_at or now)))
                              for t in self._running)
                first = left[0] if len(left) >= self.slots else 0.0
                est = first + (pos - 1) // self.slots * typical
                return {"status": "queued", "position": pos, "waiting": len(self._waiting),
                        "running": len(self._running), "estimate_s": round(est, 1)}
        if ticket.job is None:  # stopped while queued, or failed to start
            return {"status": ticket.status, "fraction": 0.0, "records": [], "error": ticket.error,
                    "result": None, "seconds": 0.0, "counts": {}}
        return ticket.job.snapshot()

    def depth(self) -> dict:
        with self._lock:
            return {"waiting": len(self._waiting), "running": len(self._running),
                    "slots": self.slots, "typical_s": round(self.typical_s(), 1)}

    # ---- the server
    def drop(self, session_id: str) -> Ticket | None:
        """A leaving session: its queued ticket is dropped, its running run stopped."""
        with self._lock:
            t = self.ticket_of(session_id, locked=True)
            if t is not None and t.status == "queued":
                self._waiting.remove(t)
                t.status = "stopped"
                t.done.set()
                return t
        if t is not None and t.job is not None:
            t.job.stop()
        return t

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if len(self._running) >= self.slots or not self._waiting:
                    return
                t = self._waiting.popleft()
                t.status, t.started_at = "running", time.time()
                self._running.append(t)
            try:
                t.job = self._start(t)
            except Exception as e:  # noqa: BLE001 - a run that cannot start frees its slot
                t.status, t.error = "failed", str(e)
                self._finish(t)
                continue
            threading.Thread(target=self._watch, args=(t,), daemon=True,
                             name=f"teach-watch-{t.session.id}").start()

    def _watch(self, t: Ticket) -> None:
        t.job.thread.join()
        t.status, t.error = t.job.status, t.job.error
        if t.status == "done":
            self._durations.append(time.time() - (t.started_at or time.time()))
        self._finish(t)

    def _finish(self, t: Ticket) -> None:
        with self._lock:
            if t in self._running:
                self._running.remove(t)
        try:
            if self._ended is not None:
                self._ended(t)
        finally:
            t.done.set()
            self._dispatch()
