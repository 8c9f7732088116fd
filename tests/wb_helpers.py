"""Helpers of the workbench tests: throwaway checkpoints and a launched app on a free port."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from app_server import AppServer  # noqa: E402  (the benchmarks launch the app with it too)

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, for the browser tests
DEMO = {"mmt_tiny": "configs/synthetic_mmt_tiny.yaml", "mat_tiny": "configs/synthetic_mat_tiny.yaml",
        "mvit_tiny_video": "configs/synthetic_video_tiny.yaml"}


def make_checkpoint(out: Path, name: str, seed: int = 0) -> Path:
    """A randomly initialised demo model saved as a checkpoint with the demo recipe's meta."""
    import torch

    from mmt_core.checkpoint import make_meta, save_checkpoint
    from mmt_core.config import load_config
    from mmt_core.data.synthetic import CLASSES
    from mmt_core.engine import build_model

    cfg = load_config(ROOT / DEMO[name])
    classes = {"label": [c.name for c in CLASSES]}
    torch.manual_seed(seed)
    model = build_model(cfg, classes)
    save_checkpoint(out / name, model, make_meta(cfg, model, classes))
    return out / name


def random_checkpoints(out: Path) -> Path:
    """The three demo models with random weights, written under out (returned)."""
    for n in DEMO:
        make_checkpoint(out, n)
    return out


def demo_checkpoints(tmp: Path) -> Path:
    """The shipped checkpoints/ when all three exist, else random ones written under tmp."""
    shipped = ROOT / "checkpoints"
    if all((shipped / n / "model.safetensors").is_file() for n in DEMO):
        return shipped
    return random_checkpoints(tmp)


def one_torch_thread():
    """One torch thread: the suite shares 2 cores, and 2 threads each oversubscribe them."""
    from mmt_core.data.features import one_thread

    return one_thread()


def serve_app(tmp: Path, **env: str):
    """Launch app.py on the demo checkpoints with MMT_* settings `env`; yield the AppServer."""
    env = {"MMT_CHECKPOINTS": str(demo_checkpoints(tmp / "ckpt")),
           "MMT_CACHE_DIR": str(tmp / "cache"), "MMT_APP_THREADS": "1", **env}
    server = AppServer(env, tmp / "app.log")
    server.cache_dir = Path(env["MMT_CACHE_DIR"])
    try:
        server.wait()
        yield server
    finally:
        server.stop()


VIEWPORT = {"width": 1400, "height": 1000}  # every browser test's page size


def load_script(relpath: str):
    """A repo script (benchmarks/…, scripts/…) imported as a module, by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(relpath).stem, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def artifact(name: str) -> Path:
    """ROOT/artifacts/NAME, the folder made: where the browser tests leave screenshots."""
    (ROOT / "artifacts").mkdir(exist_ok=True)
    return ROOT / "artifacts" / name


def launch_chromium(playwright):
    """Headless Debian chromium as root on a machine without network: no sandbox, no GPU, no
    background connections (each would be refused)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"])


def browser_marks():
    """pytestmark of a browser test module: browser, slow, and skipped without chromium."""
    import pytest

    return [pytest.mark.browser, pytest.mark.slow,
            pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")]
