"""workbench.classroom and Workbench.view without the page: the training queue (FIFO, slots,
one run per session, Stop and a leaving session touch only their own run), per-session model
sets and taught sets, session clean-up, server folders only under MMT_TEACH_FOLDERS, and clip
names instead of server paths."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mmt_core.errors import UserError
from workbench import classroom, teach
from wb_helpers import one_torch_thread, random_checkpoints


class StepJob:
    """A stand-in for teach.TeachJob with its interface (thread, stop, status, snapshot): it
    runs until released or stopped, so the queue's order can be watched step by step."""

    def __init__(self, name: str, log: list):
        self.name, self.log, self.status, self.error = name, log, "running", ""
        self.release, self._stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.log.append(("start", self.name))
        while not (self.release.is_set() or self._stop.is_set()):
            time.sleep(0.01)
        self.status = "stopped" if self._stop.is_set() else "done"

    def stop(self):
        self._stop.set()

    def snapshot(self):
        return {"status": self.status, "fraction": 0.5, "records": [], "error": ""}


def wait_for(cond, timeout=10.0):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.01)


def test_queue_is_fifo_with_one_slot_and_one_run_per_session(tmp_path):
    log, jobs = [], {}

    def start(ticket):
        jobs[ticket.session.id] = StepJob(ticket.session.id, log)
        return jobs[ticket.session.id]

    ended = []
    q = classroom.TrainQueue(1, start, ended=lambda t: ended.append(t.session.id))
    people = classroom.Sessions("demo", tmp_path)
    a, b, c = (people.get(n) for n in "abc")
    ta = q.submit(classroom.Ticket(a, tmp_path))
    tb = q.submit(classroom.Ticket(b, tmp_path))
    tc = q.submit(classroom.Ticket(c, tmp_path))
    wait_for(lambda: "a" in jobs)
    assert ta.status == "running" and tb.status == tc.status == "queued"
    assert q.snapshot(tb)["position"] == 1 and q.snapshot(tc)["position"] == 2
    est_b, est_c = q.snapshot(tb)["estimate_s"], q.snapshot(tc)["estimate_s"]
    assert 0 < est_b < est_c  # c waits for a and for b
    with pytest.raises(UserError, match="already running"):
        q.submit(classroom.Ticket(a, tmp_path))  # one run per session
    # b's Stop removes b from the queue and leaves a running; c moves up
    assert q.stop("b") == "Removed your run from the queue."
    assert tb.status == "stopped" and ta.status == "running" and not jobs["a"]._stop.is_set()
    assert q.snapshot(tc)["position"] == 1
    assert q.stop("nobody") == "Nothing of yours is training or waiting."
    jobs["a"].release.set()
    wait_for(lambda: "c" in jobs)
    assert ta.done.is_set() and ta.status == "done" and tc.status == "running"
    assert "b" not in jobs and [n for _, n in log] == ["a", "c"]
    # a leaving session's running run is stopped, and the slot goes on
    q.drop("c")
    wait_for(tc.done.is_set)
    assert tc.status == "stopped" and ended == ["a", "c"]
    depth = q.depth()
    assert (depth["waiting"], depth["running"], depth["slots"]) == (0, 0, 1)
    # the estimate is now a's finished run (c was stopped: not a run's length), not the guess
    assert len(q._durations) == 1
    assert depth["typical_s"] == round(q._durations[0], 1) != classroom.FIRST_RUN_GUESS_S


def test_two_slots_run_two_and_a_leaving_session_loses_its_queued_run(tmp_path):
    log, jobs = [], {}
    q = classroom.TrainQueue(2, lambda t: jobs.setdefault(t.session.id,
                                                          StepJob(t.session.id, log)))
    people = classroom.Sessions("demo", tmp_path)
    tickets = {n: q.submit(classroom.Ticket(people.get(n), tmp_path)) for n in "abc"}
    wait_for(lambda: len(jobs) == 2)
    assert tickets["c"].status == "queued" and q.depth()["running"] == 2
    q.drop("c")
    assert tickets["c"].status == "stopped" and tickets["c"].done.is_set()
    for j in jobs.values():
        j.release.set()
    wait_for(lambda: all(tickets[n].done.is_set() for n in "ab"))
    assert sorted(jobs) == ["a", "b"]


def test_a_failing_start_frees_its_slot(tmp_path):
    def start(ticket):
        raise RuntimeError("no disk")

    q = classroom.TrainQueue(1, start)
    t = q.submit(classroom.Ticket(classroom.Sessions("demo", tmp_path).get("a"), tmp_path))
    assert t.done.is_set() and t.status == "failed" and "no disk" in t.error
    assert q.depth()["running"] == 0


def test_clip_refs_are_names_under_the_common_folder():
    from workbench.service import clip_refs

    refs = clip_refs(["/data/set/a/x.mp4", "/data/set/b/y.mp4"])
    assert refs == {"/data/set/a/x.mp4": "a/x.mp4", "/data/set/b/y.mp4": "b/y.mp4"}
    assert clip_refs(["/d/one.mp4"]) == {"/d/one.mp4": "one.mp4"}


# ------------------------------------------------------------------ Workbench views
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return random_checkpoints(tmp_path_factory.mktemp("ckpt"))


def taught_zip(tmp: Path, classes: list[str]) -> Path:
    """A taught-models zip of random demo-sized models that know `classes`."""
    from test_model_set import save_tiny
    from wb_helpers import DEMO

    for name in DEMO:
        save_tiny(tmp / "taught_src" / name, name, classes)
    return teach.zip_taught(tmp / "taught_src", tmp / "taught.zip")


def test_sessions_switch_and_restore_their_own_sets(ckpts, tmp_path):
    from workbench.service import Workbench

    with one_torch_thread():
        wb = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "c")
        a, b = wb.view("alice"), wb.view("bob")
        demo_classes = a.class_names
        with pytest.raises(UserError, match="no taught models yet"):
            a.use("taught")
        summary = a.restore_taught(taught_zip(tmp_path, ["knock", "clap"]))
        assert summary["classes"] == ["knock", "clap"]
        assert a.active == "taught" and a.class_names == ["knock", "clap"]
        # Bob sees nothing of it: his set, his classes, no taught set of his own
        assert wb.view("bob").active == "demo" and wb.view("bob").class_names == demo_classes
        with pytest.raises(UserError, match="no taught models yet"):
            wb.view("bob").use("taught")
        # Alice's next request still answers with her set; Bob's predict with the demo's
        assert wb.view("alice").class_names == ["knock", "clap"]
        clip = b.examples()[0]
        assert set(wb.view("bob").predict(clip, topk=6)["probs"]["mmt"]) == set(demo_classes)
        res = wb.view("alice").predict(clip, topk=2)
        assert res["models"] == "taught" and set(res["probs"]["mmt"]) == {"knock", "clap"}
        # a view keeps its set for the whole answer, even when its session switches meanwhile
        v = wb.view("alice")
        v.session.active = "demo"  # another request of Alice's switched back
        assert v.class_names == ["knock", "clap"] and wb.view("alice").class_names == demo_classes
        # Alice leaves: her taught set and clips go; Bob is untouched
        taught = wb.view("alice").taught_dir
        wb.view("alice").clips.add("alice", "knock", [clip], check=wb.check_clip)
        assert taught.is_dir() and wb.clips.folder("alice").is_dir()
        wb.end_session("alice")
        assert not taught.exists() and not wb.clips.folder("alice").exists()
        assert wb.view("alice").active == "demo"  # a new session of that name starts afresh
        assert wb.view("bob").class_names == demo_classes


def test_idle_sessions_are_ended_by_age(ckpts, tmp_path):
    from workbench.service import Workbench

    wb = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "c")
    wb.view("old").clips.add("old", "x", [wb.examples()[0]], check=wb.check_clip)
    wb.sessions.get("old").last_seen -= 10_000
    wb.view("new")
    wb.session_ttl_s = 5_000
    assert wb.sweep(every_s=0) == ["old"]
    assert not wb.clips.folder("old").exists() and "new" in wb.sessions.idle(-1)


def test_server_folders_only_under_mmt_teach_folders(ckpts, tmp_path, monkeypatch):
    import shutil

    from workbench.service import Workbench

    shared, private = tmp_path / "shared", tmp_path / "private"
    wb0 = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "c")
    for root in (shared, private):
        for c in ("a", "b"):
            (root / c).mkdir(parents=True)
            shutil.copyfile(wb0.examples()[0], root / c / "x.mp4")
    with pytest.raises(UserError, match="off on this server"):
        wb0.view("s").add_folder(shared)  # the default: off
    monkeypatch.setenv("MMT_TEACH_FOLDERS", str(shared))
    wb = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "c2")
    assert wb.view("s").add_folder(shared) == {"a": 1, "b": 1}
    for bad in (private, shared / ".." / "private", wb.teach_dir / "sessions"):
        with pytest.raises(UserError, match="not under a folder this server shares"):
            wb.view("s").add_folder(bad)
    (shared / "c").mkdir()
    (shared / "c" / "link.mp4").symlink_to(private / "a" / "x.mp4")  # a link out of it
    with pytest.raises(UserError, match="outside the shared folders"):
        wb.view("t").add_folder(shared)


def test_served_dirs_leave_out_the_teach_folders(ckpts, tmp_path):
    from workbench.service import Workbench

    wb = Workbench(checkpoints=ckpts, cache_dir=tmp_path / "c")
    served = [Path(d) for d in wb.served_dirs()]
    assert Path(wb.examples()[0]).parent.parent in served
    assert not any(wb.teach_dir == d or wb.teach_dir in d.parents for d in served)
    assert wb.shown(wb.examples()[0]).startswith("examples/")


def test_serving_other_machines_needs_a_password():
    import subprocess
    import sys

    from wb_helpers import ROOT

    run = lambda *a: subprocess.run([sys.executable, "app.py", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    out = run("--host", "0.0.0.0")
    assert out.returncode == 2 and "give --auth USER:PASSWORD or --class-password" in out.stderr
    bad = run("--auth", "nopassword")
    assert bad.returncode == 2 and "give USER:PASSWORD" in bad.stderr


def test_class_password_and_named_logins():
    import importlib.util

    from wb_helpers import ROOT

    spec = importlib.util.spec_from_file_location("app_args", ROOT / "app.py")
    src = (ROOT / "app.py").read_text().split("# Before the page is built")[0]
    mod = importlib.util.module_from_spec(spec)
    exec(compile(src, "app.py", "exec"), mod.__dict__)  # the arguments part, not the page
    check = mod.make_auth([("alice", "pw1")], "class-pw")
    assert check("alice", "pw1") and not check("alice", "class-pw")
    assert check("anyone", "class-pw") and not check("anyone", "pw1") and not check("", "class-pw")
    assert mod.make_auth(None, None) is None
