"""MMT Workbench: `python app.py` serves the Gradio page on http://127.0.0.1:7860.

--models DIR opens your own model set (a `mmt compare` run, a taught folder, a checkpoint
folder), named by its folder in the Models switch beside the shipped demo; several --models open
several. Its reference and example clips come from --data MANIFEST (one for all sets, or one per
--models in order; default: the manifest its fused model was trained on), split --split
(default test).
--host / --port (or GRADIO_SERVER_NAME / GRADIO_SERVER_PORT) choose the address; MMT_CHECKPOINTS,
MMT_CACHE_DIR, MMT_APP_MAX_SECONDS and MMT_APP_MAX_MB the demo models, cache and upload limits;
MMT_APP_WARMUP the projections fitted at start (default "umap"; "none" for none);
MMT_APP_THREADS torch's CPU threads (default 1; 0 = torch's default).
A class on one server (docs/workbench.md, "Running it for a class"): --host 0.0.0.0 needs
--auth USER:PASSWORD (repeatable) or --class-password (MMT_CLASS_PASSWORD; any user name), or
--open; MMT_TRAIN_SLOTS training runs at once, MMT_APP_QUEUE waiting events at most,
MMT_LIMIT_<GROUP> events of a group at once, MMT_TEACH_FOLDERS the server folders the Teach
tab may read (default: none), MMT_SESSION_TTL_S an idle session's life.
Importing this file only builds the page; models load in a warm-up thread at launch.
"""
import argparse
import hmac
import os
import sys
import threading

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Events waiting in gradio's queue at most: a class of 30, each page with a few events queued
# at once (an upload's predict and timeline, the Teach timer); past it a request is refused
# with "Queue is full" at once instead of waiting minutes.
QUEUE_MAX = int(os.environ.get("MMT_APP_QUEUE", "128"))


def user_password(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError(f"{text!r}: give USER:PASSWORD")
    return user, password


def make_auth(pairs, class_password: str | None):
    """gradio's auth: the USER:PASSWORD pairs, and any user name with the class password."""
    if not pairs and not class_password:
        return None
    known = dict(pairs or [])

    def check(user: str, password: str) -> bool:
        if user in known:
            return hmac.compare_digest(known[user].encode(), password.encode())
        return bool(class_password and user) and hmac.compare_digest(
            class_password.encode(), password.encode())
    return check


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python app.py", description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:-1]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves "
                        "every network interface)")
    p.add_argument("--port", type=port, default=os.environ.get("GRADIO_SERVER_PORT", "7860"),
                   help="port (default 7860)")
    p.add_argument("--models", action="append",
                   help="a model set folder (repeat for several; the shipped demo on built-in "
                        "data is always there too)")
    p.add_argument("--data", action="append",
                   help="with --models: the manifest or folder of the set's clips (once for "
                        "every set, or once per --models)")
    p.add_argument("--split", default=os.environ.get("MMT_SPLIT", "test"),
                   help="with --models: the split of --data the reference clips come from")
    p.add_argument("--auth", action="append", type=user_password, metavar="USER:PASSWORD",
                   help="a login of the page and API (repeat for several)")
    p.add_argument("--class-password", default=os.environ.get("MMT_CLASS_PASSWORD") or None,
                   help="one password for a class: any user name logs in with it "
                        "(default: MMT_CLASS_PASSWORD)")
    p.add_argument("--open", action="store_true",
                   help="serve another host than this machine without a password")
    args = p.parse_args(argv)
    if args.host not in LOCAL_HOSTS and not (args.auth or args.class_password or args.open):
        p.error(f"--host {args.host} serves other machines: give --auth USER:PASSWORD or "
                "--class-password PASSWORD (or --open to serve without a password)")
    args.models = args.models or env_list("MMT_MODELS")  # the flags, else the environment's
    args.data = args.data or env_list("MMT_DATA")
    if args.data and not args.models:
        p.error("--data goes with --models")
    if len(args.data) not in (0, 1, len(args.models)):
        p.error(f"give one --data for every --models, or one for all ({len(args.models)} "
                f"--models, {len(args.data)} --data)")
    return args


def env_list(name: str) -> list[str]:
    """An os.pathsep-separated list from the environment (MMT_MODELS=a:b)."""
    return [v for v in os.environ.get(name, "").split(os.pathsep) if v]


def check_model_set(args) -> None:
    """A bad --models / --data stops at once with one line (exit 2), before the page is up;
    MMT_MODELS / MMT_DATA / MMT_SPLIT (os.pathsep-separated) carry the choice to the
    workbench."""
    from mmt_core.errors import UserError
    from mmt_core.model_set import open_model_set

    data = args.data if len(args.data) == len(args.models) else args.data * len(args.models)
    try:
        for models, manifest in zip(args.models, data or [None] * len(args.models)):
            ms = open_model_set(models)
            if manifest or ms.manifest:
                from mmt_core.analysis import split_records

                split_records(ms, manifest or ms.manifest, args.split)
    except UserError as e:
        print(f"python app.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    os.environ["MMT_MODELS"] = os.pathsep.join(map(str, args.models))
    os.environ["MMT_DATA"] = os.pathsep.join(map(str, args.data))
    os.environ["MMT_SPLIT"] = args.split


def preload_libraries() -> None:
    """Import, in the main thread, the libraries that requests import lazily (plotly, sklearn,
    umap, scipy). Two requests' threads importing them at once can meet Python's import
    deadlock check (sklearn and plotly both import narwhals): the request then fails with
    '_DeadlockError: deadlock detected by _ModuleLock'. About 2 s at start."""
    import plotly.graph_objects  # noqa: F401
    import plotly.subplots  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.manifold  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import umap  # noqa: F401


# Before the page is built (gradio's import takes seconds): --help and a bad port answer at once.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.models:
    check_model_set(ARGS)

from workbench.ui import build_demo  # noqa: E402

demo = build_demo()

if __name__ == "__main__":
    from workbench.service import get_workbench

    import torch

    # One thread by default: on this project's 2-core CPU, upload -> all results took 2.5 s with
    # 1 thread and 9-25 s with 2 while other processes ran (OpenMP threads waiting on each other).
    threads = int(os.environ.get("MMT_APP_THREADS", "1"))
    if threads > 0:
        torch.set_num_threads(threads)
    wb = get_workbench()
    preload_libraries()

    def warmup():
        methods = os.environ.get("MMT_APP_WARMUP", "umap").split(",")
        try:
            wb.warmup(methods=[m for m in methods if m and m != "none"])
        except Exception as e:  # e.g. missing checkpoints: the page shows it on each request
            print(f"warm-up failed: {e}")

    # Warm up in the background: the page is served at once, the first request waits for it.
    threading.Thread(target=warmup, daemon=True, name="warmup").start()
    from workbench.ui import LIMITS

    # each event's group and limit are set by workbench.ui.set_limits; the default covers none
    demo.queue(default_concurrency_limit=LIMITS["light"], max_size=QUEUE_MAX)
    # Served: only the folders the page shows files from (examples, dataset copies, thumbnails);
    # the teach folders (sessions' clips, runs, taught sets) never, whatever a URL names.
    demo.launch(server_name=ARGS.host, server_port=ARGS.port,
                max_file_size=f"{wb.max_mb:g}mb", allowed_paths=wb.served_dirs(),
                blocked_paths=[str(wb.teach_dir)], show_error=True,
                auth=make_auth(ARGS.auth, ARGS.class_password))
