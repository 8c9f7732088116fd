"""The Gradio page: Predict, Explain, Embeddings, Dataset, Teach and Ablations tabs over
workbench.service.

Handlers are thin: they call the process-wide `Workbench` and turn its arrays into Gradio
values. Every event has an api_name ("predict", "explain", "embed", "ablations"); an upload runs
predict, then explain, then embed, so one upload fills every tab. User-fixable problems (not a
video, corrupt, too long, too large) become a gr.Error toast and the app keeps serving.
"""
from __future__ import annotations

import functools
import traceback
from pathlib import Path

import gradio as gr
import numpy as np

from mmt_core.errors import UserError
from mmt_core.explain import CAM_BLOCKS, cam_blocks, list_explainers

from .classroom import env_int
from .service import ROLE_TITLES, get_workbench

TOP = "(top prediction)"


# Concurrency groups of the queue: at most LIMITS[group] events of a group run at once, the
# others wait in gradio's queue (its max_size: app.py). Chosen for a class of 30 on 2 cores
# (docs/workbench.md "Running it for a class"; benchmarks/bench_classroom.py): two predicts
# use both cores (one torch thread each) and a predict never waits behind an explain or an
# embedding; the heavier explain, embed, timeline and dataset work one at a time each; /teach
# callers only wait (workbench.classroom's queue decides who trains); the light page events
# (page load, switching sets, adding clips, the Teach timer) four at a time.
# MMT_LIMIT_<GROUP> (e.g. MMT_LIMIT_PREDICT=3) changes one.
LIMITS = {g: env_int(f"MMT_LIMIT_{g.upper()}", n) for g, n in
          {"predict": 2, "explain": 1, "embed": 1, "timeline": 1, "dataset": 1, "teach": 8,
           "light": 4}.items()}
GROUP_OF = {"predict": "predict", "explain": "explain", "explain_if_clip": "explain",
            "jump": "explain", "embed": "embed", "timeline": "timeline",
            "_click_to_start": "timeline", "dataset_run": "dataset",
            "dataset_confusion": "dataset", "dataset_cell": "dataset",
            "confusion_click": "dataset", "table_gallery": "dataset",
            "dataset_neighbours": "dataset", "teach_api": "teach"}  # else "light"
# Grad-CAM layer choices: the mean of the stage-1 map and the first stage-2 block's (the default,
# mmt_core.explain.CAM_BLOCKS: it points best on the built-in val clips), the block before the
# last (pytorch-grad-cam's default for Transformers), or the stage-1 block alone (2x finer map).
CAM_LAYERS = {"stages 1 + 2 (default)": ",".join(map(str, CAM_BLOCKS)),
              "block before the last": -2, "stage 1 (finer map)": 0}
DEFAULT_LAYER = CAM_LAYERS["stages 1 + 2 (default)"]
# Explain methods (mmt_core.explain): name -> one-line description, shown under the picker.
METHODS = list_explainers()
METHOD_TITLES = {"gradcam": "Grad-CAM", "relevance": "Attention relevance",
                 "occlusion": "Occlusion", "audio_contrast": "Audio contrast"}
ROLES = ("mmt", "audio", "video")
INTRO = """# MMT Workbench
Upload a short video clip (or pick an example) to see what the **Multiscale Multimodal
Transformer** predicts next to its audio-only and video-only counterparts, *where* it looks and
listens (Grad-CAM), where the clip lands among the reference clips (embeddings), and how the
models do on a whole dataset (**Dataset**). The *demo* models were trained on the built-in
*sounding objects* dataset (6 classes); `python app.py --models RUN` opens your own, and the
**Teach** tab trains them on classes of your own. The box on the right says which set answers."""
TEACH_INTRO = """Teach the workbench **your own classes**: name a class, add a few clips of it
(upload several files at once, record with the webcam *and* microphone, or name a folder of class
folders on the server), repeat for 2–10 classes (3+ clips each; 6 or more make a better model),
then **Train**. The audio-only and video-only models are fine-tuned from the shipped encoders,
then the MMT from those two; every tab then uses the taught models (switch back with *Models*)."""
# The hidden click relay of the timeline: a plotly click writes the clicked time into
# #timeline-click and presses #timeline-jump (gr.Plot has no click event of its own).
TIMELINE_CLICK_JS = """() => {
  const hook = () => {
    const el = document.querySelector('#timeline .js-plotly-plot');
    if (!el || el._mmtHooked || typeof el.on !== 'function') return;
    el._mmtHooked = true;
    el.on('plotly_click', (d) => {
      const box = document.querySelector('#timeline-click textarea, #timeline-click input');
      if (!box || !d.points.length) return;
      const set = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(box), 'value').set;
      set.call(box, String(d.points[0].x));
      box.dispatchEvent(new Event('input', {bubbles: true}));
      setTimeout(() => document.querySelector('#timeline-jump').click(), 300);
    });
  };
  setInterval(hook, 500);  // each new timeline is a new plot element: hook it once drawn
}"""

# Click relays of the confusion heatmap and the Embeddings maps (gr.Plot has no click event in
# this Gradio): a plotly click writes the clicked cell ("label|predicted") or the clicked point's
# clip path (its customdata) into a hidden textbox and presses a hidden button. Plotly drops its
# listeners when a figure is redrawn from scratch, so the hook is re-attached whenever the
# plot's event emitter is a new one.
PLOT_CLICK_JS = """() => {
  const relays = [
    {plots: ['#dataset-confusion'], box: '#confusion-click', go: '#confusion-go',
     value: (p) => p.y + '|' + p.x},
    {plots: ['#emb-0', '#emb-1', '#emb-2'], box: '#emb-click', go: '#emb-go',
     value: (p) => p.customdata || ''},
  ];
  const hook = () => {
    for (const r of relays) {
      for (const sel of r.plots) {
        const el = document.querySelector(sel + ' .js-plotly-plot');
        if (!el || typeof el.on !== 'function') continue;
        const mark = el._ev || el;
        if (mark._mmtHooked) continue;
        mark._mmtHooked = true;
        el.on('plotly_click', (d) => {
          const v = d.points.length ? r.value(d.points[0]) : '';
          const box = document.querySelector(r.box + ' textarea, ' + r.box + ' input');
          if (!box || !v) return;
          const set = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(box), 'value').set;
          set.call(box, String(v));
          box.dispatchEvent(new Event('input', {bubbles: true}));
          setTimeout(() => document.querySelector(r.go).click(), 300);
        });
      }
    }
  };
  setInterval(hook, 500);
}"""


def _user_errors(fn):
    """UserError → gr.Error with its one-line message; anything else → a short gr.Error."""
    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as e:  # a bug: keep serving, show what broke, log the traceback
            traceback.print_exc()
            raise gr.Error(f"internal error ({type(e).__name__}: {e})") from None
    return wrapper


def _thumbs(frames: np.ndarray, max_side: int = 224) -> list[np.ndarray]:
    """Frames (T,H,W,3) uint8 → list of images no larger than max_side (light to send)."""
    from PIL import Image

    h, w = frames.shape[1:3]
    s = min(1.0, max_side / max(h, w))
    if s == 1.0:
        return list(frames)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return [np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames]


def _time_pool(x: np.ndarray, cols: int = 256) -> np.ndarray:
    """(F, N) → (F, ≤cols) by averaging neighbouring time frames (smaller plot payload)."""
    k = max(1, x.shape[1] // cols)
    n = x.shape[1] // k * k
    return x[:, :n].reshape(x.shape[0], -1, k).mean(-1)  # (F, N/k)


def spectrogram_figure(fbank: np.ndarray, cam: np.ndarray | None = None, *, title: str = "",
                       seconds_per_frame: float = 0.01):
    """Plotly heatmap of a (F, N) log-mel spectrogram (seconds × mel bin), with an optional
    (F, N) Grad-CAM drawn over it in semi-transparent colour."""
    import plotly.graph_objects as go

    k = max(1, fbank.shape[1] // 256)
    spec = _time_pool(fbank)
    t = (np.arange(spec.shape[1]) * k + k / 2) * seconds_per_frame
    mel = np.arange(spec.shape[0])
    fig = go.Figure(go.Heatmap(z=spec, x=t, y=mel, colorscale="gray", showscale=False,
                               hovertemplate="%{x:.2f} s, mel %{y}<extra></extra>"))
    if cam is not None:
        fig.add_trace(go.Heatmap(z=_time_pool(cam), x=t, y=mel, colorscale="Jet", opacity=0.45,
                                 zmin=0, zmax=1, colorbar={"title": "CAM"},
                                 hovertemplate="%{x:.2f} s, mel %{y}: %{z:.2f}<extra></extra>"))
    fig.update_layout(title=title, height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis_title="time (s)", yaxis_title="mel bin")
    return fig


# ---------------------------------------------------------------------------- handlers
@_user_errors
def predict(clip, request: gr.Request = None):
    """clip → three top-5 Labels, the sampled frames, the spectrogram, notes."""
    wb = _wb(request)
    res = wb.predict(clip)
    labels = [res["probs"][role] for role in ROLES]  # None: skipped (the note says why)
    notes = " ".join(res["notes"])
    return (*labels, _thumbs(res["frames"]),
            spectrogram_figure(res["fbank"], title="log-mel spectrogram (normalised)"),
            f"**Note:** {notes}" if notes else "")


def method_info(method) -> str:
    """The one-line description of an explain method (Markdown)."""
    return f"**{METHOD_TITLES.get(method, method)}**: {METHODS.get(method, '')}"


def _pointing_md(pointing: dict) -> str:
    """Pointing scores per model as Markdown lines (or a note that they are not computed)."""
    lines = []
    for role, p in pointing.items():
        if p is None:
            lines.append(f"- {ROLE_TITLES[role]}: not computed yet for this method and layer "
                         "(`python scripts/precompute_pointing.py`)")
            continue
        lines.append(f"- {ROLE_TITLES[role]}: peak in the box in **{p['accuracy']:.2f}** of "
                     f"frames (energy {p['energy']:.2f}); centre baseline "
                     f"{p['centre_baseline']:.2f}, random baseline {p['random_baseline']:.2f} "
                     f"({p['clips']} clips, {p['frames']} frames)")
    return "\n".join(lines)


def cam_layer(layer) -> tuple[str, tuple[int, ...]]:
    """A CAM layer choice (its value, its label, or an API caller's -2 / "0,1") → (label, blocks)."""
    try:
        blocks = cam_blocks(CAM_LAYERS.get(layer, layer))
    except (TypeError, ValueError):
        blocks = None
    for name, value in CAM_LAYERS.items():
        if cam_blocks(value) == blocks:
            return name, blocks
    raise UserError(f"unknown CAM layer {layer!r}; choose one of {', '.join(CAM_LAYERS)}")


@_user_errors
def explain(clip, target, layer=DEFAULT_LAYER, method="gradcam", request: gr.Request = None):
    """clip, class (or TOP), CAM block, method → MMT and video-only map overlays (the sounding
    object's box drawn on built-in clips), MMT's audio map on the spectrogram, and the method's
    pointing scores on the set's clips with boxes (else the built-in test clips)."""
    wb = _wb(request)
    where, block = cam_layer(layer)
    method = method or "gradcam"
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    res = wb.explain(clip, None if target in (None, "", TOP) else target, block=block,
                     method=method)
    ov, tg = res["overlays"], res["targets"]
    title = METHOD_TITLES.get(method, method)
    audio = res.get("audio_cams", {}).get("mmt")
    fig = spectrogram_figure(res["fbank"], audio,
                             title=(f"MMT audio {title} for '{tg.get('mmt')}'" if audio is not None
                                    else f"{title} gives no audio map"),
                             seconds_per_frame=res["seconds_per_frame"])
    layer_note = f" (CAM layer: {where})" if method == "gradcam" else ""
    md = (f"{title}{layer_note}, for class "
          + ", ".join(f"{ROLE_TITLES[r]}: **{c}**" for r, c in tg.items()) + ".")
    if res["boxes"] is not None:
        md += " White box: the sounding object."
    if method == "audio_contrast":
        md += " (The video-only model has no sound, so no audio contrast.)"
    if res.get("pointing_source"):
        md += (f"\n\n**Pointing game** on the {res['pointing_source']}:\n"
               + _pointing_md(res["pointing"]))
    else:
        md += ("\n\n**Pointing game**: none of this set's clips has a box sidecar (NAME.json "
               "with `boxes` and `frame_times` beside the clip).")
    video = _thumbs(ov["video"]) if "video" in ov else []
    return _thumbs(ov["mmt"]), video, fig, md


def explain_if_clip(clip, target, layer=DEFAULT_LAYER, method="gradcam", request: gr.Request = None):
    """A method change re-explains the current clip; with no clip yet it changes nothing."""
    if clip is None or clip == "":
        return (gr.update(),) * 4
    return explain(clip, target, layer, method)


@_user_errors
def embed(clip, method, source, request: gr.Request = None):
    """clip, projection, source → three scatter plots with the clip starred, ARI/HS table."""
    res = _wb(request).embed(clip, method=method or "umap", source=source or "mmt")
    md = (f"{res['reference_clips']} {res.get('reference_source', 'built-in test clips')}; "
          "ARI / HS of KMeans clusters vs classes "
          "(paper Table 3), higher is better. Click a point to open its clip.")
    return (*res["figures"], res["scores"], md)


ABLATION_HEADERS = ["row", "top-1 (%)", "± sd", "Grad-CAM pointing", "± sd", "best explainer",
                    "best pointing", "± sd", "seeds", "steps"]


@_user_errors
def ablations():
    """Table 2 rows from checkpoints/ablations.json (mean ± sd over seeds) as a table and charts
    of top-1 and of the pointing game (Grad-CAM and the row's best explainer)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = get_workbench().ablations()
    if not rows:
        return (None, None, "No ablation results yet: run `notebooks/03_ablations.ipynb` or "
                "`mmt ablate --out runs/ablations --seed 0 --seed 1 --seed 2` (it trains each "
                "Table 2 row on the built-in dataset and writes `ablations.json`), copy it to "
                "`checkpoints/ablations.json`, then press Reload.")
    pct = lambda v: None if v is None else round(100 * v, 1)  # noqa: E731
    r3 = lambda v: None if v is None else round(v, 3)  # noqa: E731
    table = []
    for name, r in rows.items():
        best = r.get("pointing_best") or {}
        cam = (r.get("explainers") or {}).get("gradcam") or {}
        table.append([name, pct(r.get("top1")), pct(r.get("top1_sd")), r3(cam.get("accuracy")),
                      r3(cam.get("accuracy_sd")), best.get("explainer"), r3(best.get("accuracy")),
                      r3(best.get("accuracy_sd")), len(r.get("seeds") or [0]), r.get("steps")])
    fig = make_subplots(rows=1, cols=2, subplot_titles=("top-1 (%)", "pointing game (frames)"))
    names = [t[0] for t in table]
    fig.add_trace(go.Bar(x=names, y=[t[1] for t in table], name="top-1",
                         error_y={"type": "data", "array": [t[2] or 0 for t in table]}), 1, 1)
    fig.add_trace(go.Bar(x=names, y=[t[3] for t in table], name="Grad-CAM",
                         error_y={"type": "data", "array": [t[4] or 0 for t in table]}), 1, 2)
    fig.add_trace(go.Bar(x=names, y=[t[6] for t in table], name="best explainer",
                         text=[t[5] or "" for t in table],
                         error_y={"type": "data", "array": [t[7] or 0 for t in table]}), 1, 2)
    first = next(iter(rows.values()))
    # the baselines depend on the clips only: take them from any row with a pointing game
    base = next((next(iter(r["explainers"].values())) for r in rows.values()
                 if r.get("explainers")), {})
    if base.get("centre_baseline") is not None:
        for y, label in ((base["centre_baseline"], "centre"), (base["random_baseline"], "random")):
            fig.add_hline(y=y, line_dash="dot", annotation_text=label, row=1, col=2)
    split = first.get("split", "test")
    fig.update_layout(title=f"Table 2 rows on the built-in {split} split (mean ± sd over seeds)",
                      height=380, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    seeds = sorted({len(r.get("seeds") or [0]) for r in rows.values()})
    md = (f"{len(table)} rows from `checkpoints/ablations.json`, "
          f"{'/'.join(map(str, seeds))} seed(s) each; top-1 on {first.get('clips')} clips")
    if base:
        md += (f", pointing on {base.get('clips')} clips ({base.get('frames')} frames); "
               f"baselines: centre {base['centre_baseline']:.2f}, random "
               f"{base['random_baseline']:.2f}")
    return table, fig, md + "."


@_user_errors
def page_load(request: gr.Request = None):
    """Fill the example and class choices (loads the models and writes the examples once)."""
    wb = _wb(request)
    examples = list(_examples(wb))  # by class name: the page never sees a server path
    return (gr.update(choices=examples),
            gr.update(choices=[TOP, *wb.class_names], value=TOP))


def _examples(wb) -> dict:
    """{class name: example clip} of the session's set."""
    return {p.stem.split("_", 2)[-1].rsplit("_", 1)[0]: p for p in wb.examples()}


def show_clip(clip):
    """The current clip (an upload, an example, a dataset clip) in Predict's HTML5 player."""
    return clip or None


@_user_errors
def use_example(name, request: gr.Request = None):
    """A picked example (its class name) → its clip, the current clip of every tab."""
    if not name:
        return None
    path = _examples(_wb(request)).get(name)
    if path is None:
        raise UserError(f"no example clip named {name!r}")
    return str(path)


# ---------------------------------------------------------------------------- timeline
def timeline_figure(tl: dict, top: int = 6):
    """Plotly heatmaps: time (window centre) × the top classes, one row per model."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    roles = [r for r in ROLES if tl["probs"].get(r) is not None]
    names = tl["class_names"]
    mean = np.mean([tl["probs"][r] for r in roles], axis=(0, 1))  # (C,)
    keep = sorted(np.argsort(-mean)[:top])  # the classes most present over the clip
    centres = [(a + b) / 2 for a, b in zip(tl["starts"], tl["ends"])]
    fig = make_subplots(rows=len(roles), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[ROLE_TITLES[r] for r in roles])
    for i, role in enumerate(roles, 1):
        z = tl["probs"][role][:, keep].T  # (classes, windows)
        fig.add_trace(go.Heatmap(
            z=z, x=centres, y=[names[c] for c in keep], zmin=0, zmax=1, colorscale="Viridis",
            showscale=i == 1, colorbar={"title": "prob"},
            customdata=np.array([[f"{a:.1f}–{b:.1f} s" for a, b in zip(tl["starts"], tl["ends"])]]
                                * len(keep)),
            hovertemplate="%{customdata}<br>%{y}: %{z:.2f}<extra></extra>"), row=i, col=1)
    fig.update_layout(height=140 + 150 * len(roles), margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title=f"Timeline: {len(centres)} windows of {tl['window_seconds']:g} s "
                            "(click a window to jump to it)")
    fig.update_xaxes(title_text="time (s, window centre)", row=len(roles), col=1)
    return fig


@_user_errors
def timeline(clip, request: gr.Request = None):
    """clip → per-window timeline of the three models (a clip longer than one window), the
    window slider, a note."""
    if not clip:
        return None, gr.update(visible=False), ""
    wb = _wb(request)
    tl = wb.timeline(clip)
    if len(tl["starts"]) < 2:
        return (None, gr.update(visible=False),
                f"The clip ({tl['duration']:.1f} s) fits in one {tl['window_seconds']:g} s window: "
                "no timeline.")
    return (timeline_figure(tl),
            gr.update(visible=True, minimum=0.0, maximum=round(tl["starts"][-1], 2), value=0.0,
                      step=0.1),
            f"{len(tl['starts'])} windows over {tl['duration']:.1f} s.")


@_user_errors
def jump(clip, start, target, layer=DEFAULT_LAYER, method="gradcam", request: gr.Request = None):
    """A window start (the slider or a timeline click) → that window's frames and Explain tab."""
    wb = _wb(request)
    start = float(start or 0.0)
    tl_starts = wb.timeline(clip)["starts"]
    start = min(tl_starts, key=lambda s: abs(s - start))  # the nearest window
    frames, _ = wb.frames_at(clip, start)
    try:
        block = cam_layer(layer)[1]
    except UserError:
        block = CAM_BLOCKS
    method = method if method in METHODS else "gradcam"
    res = wb.explain(clip, None if target in (None, "", TOP) else target, block=block,
                     method=method, start=start)
    ov, tg = res["overlays"], res["targets"]
    title = METHOD_TITLES.get(method, method)
    audio = res.get("audio_cams", {}).get("mmt")
    fig = spectrogram_figure(res["fbank"], audio, title=f"MMT audio {title} for '{tg.get('mmt')}'"
                             f" (window at {start:.1f} s)",
                             seconds_per_frame=res["seconds_per_frame"])
    md = (f"Window {start:.1f}–{start + wb.models['mmt'].meta['preprocessing']['clip_seconds']:.1f}"
          f" s; {title} for class "
          + ", ".join(f"{ROLE_TITLES[r]}: **{c}**" for r, c in tg.items()) + ".")
    video = _thumbs(ov["video"]) if "video" in ov else []
    return _thumbs(frames), _thumbs(ov["mmt"]), video, fig, md, gr.update(value=start)


# ---------------------------------------------------------------------------- models + teach
def _models_md(wb) -> str:
    names = ", ".join(wb.class_names)
    return f"Models: **{wb.active}** ({len(wb.class_names)} classes: {names})."


@_user_errors
def switch_models(name, request: gr.Request = None):
    """The Models radio (demo, each --models set, taught) → this session's model set (no other
    session's); class choices follow (models_changed then refreshes the examples and the
    Dataset tab)."""
    wb = _wb(request)
    wb.use(name or "demo")
    return _models_md(wb), gr.update(choices=[TOP, *wb.class_names], value=TOP)


def _session(request) -> str:
    """The session of a request: the browser tab's or the gradio_client Client's."""
    return getattr(request, "session_hash", None) or "local"


def _wb(request):
    """The Workbench as this request's session sees it (workbench.service.Workbench.view)."""
    return get_workbench().view(_session(request))


def _clips_table(counts: dict) -> list[list]:
    return [[c, n] for c, n in counts.items()]


@_user_errors
def teach_add(files, class_name, request: gr.Request = None):
    """Uploaded files → copied into this session's CLASS folder (app limits apply)."""
    wb = _wb(request)
    paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (files or [])]
    counts = wb.clips.add(wb.session.id, class_name, paths, check=wb.check_clip)
    return _clips_table(counts), None, f"Added {len(paths)} clip(s) to **{class_name.strip()}**."


@_user_errors
def teach_add_recording(video, class_name, request: gr.Request = None):
    """A webcam recording (with sound) → one clip of CLASS."""
    wb = _wb(request)
    if not video:
        raise UserError("record a clip first (webcam + microphone), then add it")
    counts = wb.clips.add(wb.session.id, class_name, [video], check=wb.check_clip)
    return _clips_table(counts), None, f"Added the recording to **{class_name.strip()}**."


@_user_errors
def teach_add_folder(folder, request: gr.Request = None):
    """A server-side folder of class folders (under MMT_TEACH_FOLDERS) → every clip added under
    its folder's class."""
    counts = _wb(request).add_folder(folder)
    return _clips_table(counts), f"Added the class folders of `{Path(str(folder)).name}`."


@_user_errors
def teach_clear(request: gr.Request = None):
    wb = _wb(request)
    wb.clips.clear(wb.session.id)
    return [], "Cleared: no classes."


@_user_errors
def teach_train(request: gr.Request = None):
    """Queue a training run on this session's clips; the timer starts polling (position in
    the queue, then progress)."""
    wb = _wb(request)
    counts = wb.clips.counts(wb.session.id)
    wb.start_teach(wb.clips.ready(wb.session.id))
    return gr.Timer(active=True), (f"Training on {sum(counts.values())} clips of {len(counts)} "
                                   "classes (queued until a training slot is free)…")


def teach_stop(request: gr.Request = None):
    """Stop this session's run (a queued one leaves the queue); never another session's."""
    wb = _wb(request)
    return wb.trainq.stop(wb.session.id)


def _progress_html(frac: float, text: str) -> str:
    return (f'<div id="teach-progress-bar"><progress value="{frac:.3f}" max="1" '
            f'style="width:100%;height:18px"></progress><div>{text}</div></div>')


def training_figure(records: list[dict]):
    """Loss and accuracy per step (train) and validation top-1 per epoch, one colour per run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["loss", "accuracy"])
    colours = {"audio": "#1f77b4", "video": "#2ca02c", "mmt": "#d62728"}
    steps = {}
    n = 0
    for r in records:
        if r.get("type") == "step":
            n += 1
            steps.setdefault(r.get("run", "mmt"), []).append((n, r.get("total"), r.get("acc")))
    for run, rows in steps.items():
        x = [a for a, _, _ in rows]
        fig.add_trace(go.Scatter(x=x, y=[b for _, b, _ in rows], name=f"{run} loss",
                                 line={"color": colours.get(run)}), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=[c for _, _, c in rows], name=f"{run} train acc",
                                 line={"color": colours.get(run), "dash": "dot"}), row=1, col=2)
    n, val = 0, {}
    for r in records:
        n += r.get("type") == "step"
        if r.get("type") == "epoch" and r.get("val_top1") is not None:
            val.setdefault(r.get("run", "mmt"), []).append((n, r["val_top1"]))
    for run, rows in val.items():
        fig.add_trace(go.Scatter(x=[a for a, _ in rows], y=[b for _, b in rows], mode="markers+lines",
                                 name=f"{run} val top-1", marker={"size": 9, "symbol": "diamond"},
                                 line={"color": colours.get(run)}), row=1, col=2)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    return fig


def teach_poll(request: gr.Request = None):
    """Timer tick: progress bar, live plot, status; stops the timer when the run ends."""
    wb = _wb(request)
    ticket = wb.session.last_ticket
    if ticket is None:
        return (_progress_html(0, "idle"), None, "", gr.Timer(active=False), gr.update(),
                gr.update(), gr.update())
    snap = wb.trainq.snapshot(ticket)
    if snap["status"] == "queued":
        text = (f"waiting for a training slot: number {snap['position']} in the queue "
                f"({snap['running']} training now); starts in about "
                f"{max(1, round(snap['estimate_s'] / 60))} min")
        return (_progress_html(0, text), None, "", gr.Timer(active=True), gr.update(),
                gr.update(), gr.update(interactive=False))
    running = snap["status"] == "running"
    runs = [r.get("run") for r in snap["records"]]
    now = runs[-1] if runs else "preparing (decoding each clip once)"
    text = (f"{snap['status']}: {100 * snap['fraction']:.0f} % · {snap['seconds']:.0f} s · "
            f"{'now: ' + str(now) if running else ''}")
    fig = training_figure(snap["records"]) if snap["records"] else None
    md, radio, target = "", gr.update(), gr.update()
    if snap["status"] == "done":
        r = snap["result"]
        val = f", validation top-1 **{100 * r['val_top1']:.0f} %**" if r.get("val_top1") is not None else ""
        md = (f"Done in {r['seconds']:.0f} s: {r['clips']} clips of {len(r['classes'])} classes "
              f"({', '.join(r['classes'])}); MMT train top-1 {100 * (r['train_top1'] or 0):.0f} %"
              f"{val}. Every tab now uses the **taught** models.")
        radio = gr.update(value="taught")
        target = gr.update(choices=[TOP, *r["classes"]], value=TOP)
    elif snap["status"] == "failed":
        md = f"Training failed: {snap['error']}"
    elif snap["status"] == "stopped":
        md = "Stopped. Your models stay as they were; train again to finish."
    return (_progress_html(snap["fraction"], text), fig, md, gr.Timer(active=running), radio,
            target, gr.update(interactive=not running))


@_user_errors
def teach_download(request: gr.Request = None):
    return str(_wb(request).taught_zip())


@_user_errors
def teach_restore(file, request: gr.Request = None):
    wb = _wb(request)
    summary = wb.restore_taught(file)
    return (f"Restored the taught models ({', '.join(summary['classes'])}); every tab now uses "
            "them.", gr.update(value="taught"),
            gr.update(choices=[TOP, *summary["classes"]], value=TOP))


@_user_errors
def teach_api(files, names, request: gr.Request = None):
    """API /teach: clip files + a JSON list of their class names (same length) → train with the
    default settings (blocking: waits in the training queue like the page's Train, then trains)
    → {classes, clips, train_top1, val_top1, seconds, models}. The clips replace this client's
    earlier ones; the taught set becomes this client's active set (no one else's)."""
    import json

    wb = _wb(request)
    if isinstance(names, str):
        try:
            names = json.loads(names)
        except json.JSONDecodeError:
            raise UserError("class names: a JSON list of strings, one per clip") from None
    files = [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path")
             for f in (files or [])]
    if not isinstance(names, list) or len(names) != len(files):
        raise UserError(f"give one class name per clip: {len(files)} clips, "
                        f"{len(names) if isinstance(names, list) else 'no'} names")
    session = wb.session.id
    if wb.ticket is not None:
        raise UserError(f"your training run is already {wb.ticket.status}; wait for it first")
    wb.clips.clear(session)
    for name in dict.fromkeys(names):
        wb.clips.add(session, name, [f for f, n in zip(files, names) if n == name],
                     check=wb.check_clip)
    ticket = wb.start_teach(wb.clips.ready(session))
    ticket.done.wait()
    snap = wb.trainq.snapshot(ticket)
    if snap["status"] != "done":
        raise UserError(f"training {snap['status']}: {snap['error']}" if snap["error"]
                        else f"training {snap['status']}")
    r = snap["result"]
    out = {"classes": r["classes"], "clips": r["clips"], "train_top1": r["train_top1"],
           "seconds": r["seconds"], "models": wb.session.active}
    if r.get("val_top1") is not None:
        out["val_top1"] = r["val_top1"]
    return out


def teach_tab():
    """The Teach tab's components (layout only; wired in wire_teach)."""
    c = {}
    gr.Markdown(TEACH_INTRO)
    with gr.Row():
        with gr.Column(scale=1):
            c["class_name"] = gr.Textbox(label="Class name", placeholder="e.g. knock",
                                         elem_id="teach-class")
            c["files"] = gr.File(label="Add clips of this class (several at once)",
                                 file_count="multiple", type="filepath", elem_id="teach-files")
            with gr.Accordion("…or record with the webcam and microphone", open=False):
                c["webcam"] = gr.Video(sources=["webcam", "upload"], include_audio=True,
                                       label="Recording", elem_id="teach-webcam")
                c["add_rec"] = gr.Button("Add the recording to this class")
            # only where the operator shares folders (MMT_TEACH_FOLDERS; off by default)
            with gr.Accordion("…or a folder of class folders on the server", open=False,
                              visible=bool(get_workbench().teach_folders)):
                c["folder"] = gr.Textbox(label="Server folder (FOLDER/CLASS/*.mp4)")
                c["add_folder"] = gr.Button("Add the folder's classes")
        with gr.Column(scale=1):
            c["table"] = gr.Dataframe(headers=["class", "clips"], label="Your classes",
                                      interactive=False, elem_id="teach-table")
            with gr.Row():
                c["train"] = gr.Button("Train", variant="primary", elem_id="teach-train")
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="teach-stop")
                c["clear"] = gr.Button("Clear clips")
            c["msg"] = gr.Markdown(elem_id="teach-msg")
            c["progress"] = gr.HTML(_progress_html(0, "idle"), elem_id="teach-progress")
    c["plot"] = gr.Plot(label="Training: loss and accuracy", elem_id="teach-plot")
    c["result"] = gr.Markdown(elem_id="teach-result")
    with gr.Row():
        c["download"] = gr.DownloadButton("Download the taught models (zip)",
                                          elem_id="teach-download")
        c["restore"] = gr.File(label="Restore taught models from a zip", file_types=[".zip"],
                               type="filepath", elem_id="teach-restore")
    # every 2 s while this session's run is queued or running (30 pages polling each second
    # would be 30 queue events a second on 2 cores)
    c["timer"] = gr.Timer(2.0, active=False)
    # API-only inputs of /teach (hidden): the clip files and their class names.
    c["api_files"] = gr.File(file_count="multiple", type="filepath", visible=False)
    c["api_names"] = gr.JSON(visible=False)
    c["api_out"] = gr.JSON(visible=False)
    c["api_btn"] = gr.Button(visible=False)
    return c


def wire_teach(c: dict, models: gr.Radio, target, models_md) -> None:
    hidden = {"api_visibility": "private"}
    c["files"].upload(teach_add, [c["files"], c["class_name"]], [c["table"], c["files"], c["msg"]],
                      api_name="teach_add", **hidden)
    c["add_rec"].click(teach_add_recording, [c["webcam"], c["class_name"]],
                       [c["table"], c["webcam"], c["msg"]], api_name="teach_add_recording", **hidden)
    c["add_folder"].click(teach_add_folder, c["folder"], [c["table"], c["msg"]],
                          api_name="teach_add_folder", **hidden)
    c["clear"].click(teach_clear, None, [c["table"], c["msg"]], api_name="teach_clear", **hidden)
    c["train"].click(teach_train, None, [c["timer"], c["msg"]], api_name="teach_train", **hidden)
    c["stop"].click(teach_stop, None, c["msg"], api_name="teach_stop", **hidden)
    c["timer"].tick(teach_poll, None, [c["progress"], c["plot"], c["result"], c["timer"], models,
                                       target, c["train"]], api_name="teach_poll", **hidden)
    c["download"].click(teach_download, None, c["download"], api_name="teach_download", **hidden)
    c["restore"].upload(teach_restore, c["restore"], [c["msg"], models, target],
                        api_name="teach_restore", **hidden) \
        .success(switch_models, models, [models_md, target], api_name="restore_models", **hidden)
    # /teach waits in the training queue (workbench.classroom), not in gradio's: many callers
    # may wait at once, each holding a worker thread that sleeps
    c["api_btn"].click(teach_api, [c["api_files"], c["api_names"]], c["api_out"],
                       api_name="teach")  # its group and limit: set_limits


def timeline_panel():
    """The Predict tab's timeline: plot, window slider, note, and the hidden click relay."""
    with gr.Group():
        plot = gr.Plot(label="Timeline (clips longer than one window)", elem_id="timeline")
        slider = gr.Slider(0, 1, value=0, step=0.1, visible=False, elem_id="window-start",
                           label="Jump to the window starting at (s): frames above, Explain tab")
        md = gr.Markdown(elem_id="timeline-md")
        click = gr.Textbox(visible="hidden", elem_id="timeline-click")
        btn = gr.Button("jump", visible="hidden", elem_id="timeline-jump")
    return plot, slider, md, click, btn


def wire_timeline(clip, plot, slider, md, click, btn, target, layer, method, frames,
                  explain_out) -> None:
    hidden = {"api_visibility": "private"}
    # every new clip (upload, example, API) gets its timeline; clearing the clip clears it
    clip.change(timeline, clip, [plot, slider, md], api_name="timeline")
    jump_out = [frames, *explain_out[:2], explain_out[2], explain_out[3], slider]
    jump_in = [clip, slider, target, layer, method]
    slider.release(jump, jump_in, jump_out, api_name="window")
    btn.click(_click_to_start, [click, clip], slider, api_name="timeline_click", **hidden) \
        .success(jump, jump_in, jump_out, api_name="click_window", **hidden)


def _click_to_start(x, clip, request: gr.Request = None):
    """A clicked window centre (seconds) → that window's start, for the slider."""
    try:
        centre = float(x)
    except (TypeError, ValueError):
        raise gr.Error("no window clicked", print_exception=False) from None
    tl = _wb(request).timeline(clip)
    k = int(np.argmin([abs((a + b) / 2 - centre) for a, b in zip(tl["starts"], tl["ends"])]))
    return gr.update(value=round(tl["starts"][k], 3))


def page_models(request: gr.Request = None):
    wb = _wb(request)
    try:
        return gr.update(choices=wb.set_names(), value=wb.active), _models_md(wb)
    except UserError as e:
        return gr.update(choices=wb.set_names()), str(e)


@_user_errors
def models_changed(request: gr.Request = None):
    """After a switch: the new set's example clips, and the Dataset tab emptied (its tables
    were the previous set's) with the new classes in its cell pickers."""
    wb = _wb(request)
    examples, _ = page_load(request)
    classes = wb.class_names
    md = f"Models: **{wb.active}**. Press *Evaluate* to analyse its data."
    return (examples, md, None, None, None, gr.update(choices=classes, value=classes[0]),
            gr.update(choices=classes, value=classes[0]), None, None, None)


# ---------------------------------------------------------------------------- dataset
# The Dataset tab: the active model set on its data (workbench.service dataset_*, computed by
# mmt_core.analysis). A confusion cell is chosen by clicking the heatmap (PLOT_CLICK_JS relays
# the click) or with the two dropdowns; a row of the cell or suspicious table puts its clip in
# the path box, Open plays it and loads it into Predict, Explain and the similar-clips table; a
# thumbnail above a table does all that in one click.
MODEL_TITLES = {"mmt": "fused (MMT)", "audio": "audio-only", "video": "video-only", "avg": "Avg"}
DATASET_HEADERS = {
    "accuracy": ["model", "top-1 (%)", "top-5 (%)"],
    "per_class": ["class", "clips", "fused", "audio-only", "video-only", "Avg",
                  "sound adds (fused − video)", "picture adds (fused − audio)"],
    "cell": ["clip", "label", "fused says", "audio says", "picture says"],
    "suspicious": ["rank", "score", "clip", "label", "why"],
    "neighbours": ["clip", "label", "similarity", "fused says"],
}
NEIGHBOUR_KINDS = [("by sound", "audio"), ("by picture", "video"), ("by fused embedding", "fused"),
                   ("sounds nearest this picture (g_A ~ g_V)", "cross")]


def _pct(v):
    return None if v is None else round(100 * v, 1)


def confusion_figure(conf: np.ndarray, classes: list[str], role: str):
    """Plotly heatmap of a confusion matrix, rows the label, columns the prediction."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Heatmap(z=conf, x=classes, y=classes, text=conf, texttemplate="%{text}",
                               colorscale="Blues", showscale=False,
                               hovertemplate="label %{y}, %{x}: %{z} clips<extra></extra>"))
    fig.update_layout(title=f"Confusion of the {MODEL_TITLES.get(role, role)} model", height=420,
                      xaxis_title="predicted", yaxis_title="label",
                      yaxis={"autorange": "reversed"}, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


@_user_errors
def dataset_run(request: gr.Request = None):
    """Evaluate the active set on its data: summary, tables, confusion, suspicious clips."""
    wb = _wb(request)
    s = wb.dataset_summary()
    acc = [[MODEL_TITLES[r], _pct(a["top1"]), _pct(a["top5"])] for r, a in s["accuracy"].items()]
    per = [[r["class"], r["count"], *(_pct(r.get(k)) for k in ("mmt", "audio", "video", "avg")),
            _pct(r["sound_adds"]), _pct(r["picture_adds"])] for r in s["per_class"]]
    sus = [[k + 1, round(x["score"], 2), wb.dataset_ref(x["path"]), x["label"], x["reason"]]
           for k, x in enumerate(s["suspicious"])]
    md = (f"**{s['clips']} clips** of {s['source']}"
          + (f" (a stratified sample of {s['total']})" if s["total"] > s["clips"] else "")
          + (f", {s['skipped']} unreadable" if s["skipped"] else "")
          + f"; {'read from the cache' if s['cached'] else 'computed'} in {s['seconds']:.1f} s.")
    classes = s["classes"]
    return (md, acc, per, gr.update(choices=[(MODEL_TITLES[r], r) for r in s["roles"]],
                                    value="mmt"),
            confusion_figure(*wb.dataset_confusion("mmt"), "mmt"),
            gr.update(choices=classes, value=classes[0]),
            gr.update(choices=classes, value=classes[0]), sus)


@_user_errors
def dataset_confusion(role, request: gr.Request = None):
    return confusion_figure(*_wb(request).dataset_confusion(role or "mmt"), role or "mmt")


@_user_errors
def dataset_cell(role, true, pred, request: gr.Request = None):
    """The clips of one confusion cell, with each model's top class."""
    wb = _wb(request)
    rows = wb.dataset_cell(role or "mmt", true, pred)
    return [[wb.dataset_ref(c["path"]), c["label"], *(c.get(r, {}).get("top", "—") for r in ROLES)]
            for c in rows]


def dataset_pick(table, evt: gr.SelectData):
    """A clicked table row → its clip's name (the column called "clip")."""
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    try:
        return str(table["clip"].iloc[int(row)])
    except (TypeError, KeyError, IndexError, ValueError):
        return gr.update()


@_user_errors
def confusion_click(cell, role, request: gr.Request = None):
    """A clicked heatmap cell ("label|predicted") → the cell pickers and the cell's clips."""
    true, _, pred = str(cell or "").partition("|")
    if not true or not pred:
        raise UserError("no confusion cell clicked")
    return true, pred, dataset_cell(role, true, pred, request)


@_user_errors
def embed_click(path, request: gr.Request = None):
    """A clicked point of an Embeddings map → that reference clip as the current clip."""
    if not path:
        raise UserError("no clip behind this point")
    return str(_wb(request).reference_clip(path))


GALLERY_MAX = 24  # thumbnails shown above a table (the table lists every clip)


@_user_errors
def table_gallery(table, request: gr.Request = None):
    """A table with a "clip" and a "label" column → thumbnails (each clip's middle frame,
    captioned with its label and what the fused model says) and their clips' names."""
    import pandas as pd

    if table is None or not isinstance(table, pd.DataFrame) or "clip" not in table:
        return [], []
    wb = _wb(request)
    rows = table.head(GALLERY_MAX).to_dict("records")
    paths = [r["clip"] for r in rows if r.get("clip")]
    items = []
    for r in rows:
        if not r.get("clip"):
            continue
        says = r.get("fused says")
        items.append((str(wb.thumbnail(r["clip"])),
                      f"{r.get('label', '')}" + (f" → {says}" if says else "")))
    return items, paths


def gallery_pick(paths, evt: gr.SelectData):
    """A clicked thumbnail → its clip's path."""
    if not paths or evt.index is None or not 0 <= int(evt.index) < len(paths):
        raise gr.Error("no clip there", print_exception=False)
    return paths[int(evt.index)]


@_user_errors
def dataset_open(path, request: gr.Request = None):
    """A dataset clip → the clip input (then Predict / Explain run) and the player."""
    if not path:
        raise UserError("pick a clip: click a row of a table above")
    shown = str(_wb(request).dataset_clip(path))
    return shown, shown


@_user_errors
def dataset_neighbours(clip, kind, request: gr.Request = None):
    """The current clip's nearest dataset clips of one kind."""
    if not clip:
        return []
    wb = _wb(request)
    rows = wb.dataset_neighbours(clip, kind or "fused", k=8)
    return [[wb.dataset_ref(n["path"]), n["label"], round(n["similarity"], 3), n.get("mmt", {}).get("top", "—")]
            for n in rows]


def dataset_tab() -> dict:
    """The Dataset tab's components (wired by wire_dataset)."""
    c = {}
    with gr.Row():
        c["run"] = gr.Button("Evaluate the models on their data", variant="primary",
                             elem_id="dataset-run")
        c["md"] = gr.Markdown(elem_id="dataset-md")
    with gr.Row():
        c["acc"] = gr.Dataframe(headers=DATASET_HEADERS["accuracy"], interactive=False,
                                label="Accuracy", elem_id="dataset-acc", scale=1)
        c["per_class"] = gr.Dataframe(headers=DATASET_HEADERS["per_class"], interactive=False,
                                      label="Per class (%; click a header to sort)",
                                      elem_id="dataset-per-class", scale=3)
    c["role"] = gr.Radio([(MODEL_TITLES["mmt"], "mmt")], value="mmt", label="Confusion matrix of",
                         elem_id="dataset-role")
    c["confusion"] = gr.Plot(elem_id="dataset-confusion",
                             label="Confusion matrix (click a cell to list its clips)")
    c["confusion_click"] = gr.Textbox(visible="hidden", elem_id="confusion-click")
    c["confusion_go"] = gr.Button("cell", visible="hidden", elem_id="confusion-go")
    with gr.Row():
        c["true"] = gr.Dropdown(label="Label", choices=[], elem_id="dataset-true")
        c["pred"] = gr.Dropdown(label="Predicted", choices=[], elem_id="dataset-pred")
        c["cell_btn"] = gr.Button("Show the clips of this cell", elem_id="dataset-cell-btn")
    c["cell_gallery"] = _gallery("Clips of the cell (click one to play and open it)",
                                 "dataset-cell-gallery")
    c["cell"] = gr.Dataframe(headers=DATASET_HEADERS["cell"], interactive=False,
                             label="Clips of the cell (click one)", elem_id="dataset-cell")
    c["suspicious_gallery"] = _gallery("Suspicious clips, most suspicious first (click one)",
                                       "dataset-suspicious-gallery")
    c["suspicious"] = gr.Dataframe(headers=DATASET_HEADERS["suspicious"], interactive=False,
                                   label="Suspicious clips: label, sound and picture disagree "
                                         "(click one)", elem_id="dataset-suspicious")
    with gr.Row():
        c["path"] = gr.Textbox(label="Clip", elem_id="dataset-path", scale=3)
        c["open"] = gr.Button("Play and open in Predict / Explain", elem_id="dataset-open")
    with gr.Row():
        c["player"] = gr.Video(label="Clip", interactive=False, height=320,
                               elem_id="dataset-player")
        with gr.Column():
            c["kind"] = gr.Radio(NEIGHBOUR_KINDS, value="fused", label="Similar clips",
                                 elem_id="dataset-kind")
            c["neighbours_gallery"] = _gallery("Similar clips (click one)",
                                               "dataset-neighbours-gallery")
            c["neighbours"] = gr.Dataframe(headers=DATASET_HEADERS["neighbours"],
                                           interactive=False, elem_id="dataset-neighbours")
    for t in ("cell", "suspicious", "neighbours"):  # the clip paths behind each gallery
        c[f"{t}_paths"] = gr.State([])
    return c


def _gallery(label: str, elem_id: str) -> gr.Gallery:
    return gr.Gallery(label=label, columns=8, height=190, allow_preview=False,
                      object_fit="contain", elem_id=elem_id)


def wire_dataset(c: dict, clip, pred_out, explain_in, explain_out) -> None:
    hidden = {"api_visibility": "private"}
    c["run"].click(dataset_run, None, [c["md"], c["acc"], c["per_class"], c["role"],
                                       c["confusion"], c["true"], c["pred"], c["suspicious"]],
                   api_name="dataset")
    c["role"].change(dataset_confusion, c["role"], c["confusion"], api_name="dataset_confusion")
    c["cell_btn"].click(dataset_cell, [c["role"], c["true"], c["pred"]], c["cell"],
                        api_name="dataset_cell")
    c["confusion_go"].click(confusion_click, [c["confusion_click"], c["role"]],
                            [c["true"], c["pred"], c["cell"]], api_name="confusion_click",
                            **hidden)
    c["cell"].select(dataset_pick, c["cell"], c["path"], api_name="dataset_pick_cell", **hidden)
    c["suspicious"].select(dataset_pick, c["suspicious"], c["path"],
                           api_name="dataset_pick_suspicious",
                           **hidden)
    def open_chain(event, name: str):
        """Play the clip in the path box and run Predict, Explain and Similar clips on it."""
        return event.success(dataset_open, c["path"], [clip, c["player"]],
                             api_name=f"{name}_open", **hidden) \
            .success(predict, clip, pred_out, api_name=f"{name}_predict", **hidden) \
            .success(explain, explain_in, explain_out, api_name=f"{name}_explain", **hidden) \
            .success(dataset_neighbours, [clip, c["kind"]], c["neighbours"],
                     api_name=f"{name}_neighbours", **hidden)

    c["open"].click(dataset_open, c["path"], [clip, c["player"]], api_name="dataset_open") \
        .success(predict, clip, pred_out, api_name="dataset_predict", **hidden) \
        .success(explain, explain_in, explain_out, api_name="dataset_explain", **hidden) \
        .success(dataset_neighbours, [clip, c["kind"]], c["neighbours"],
                 api_name="dataset_open_neighbours", **hidden)
    for t in ("cell", "suspicious", "neighbours"):
        # each table's clips as thumbnails; a click on one plays it and opens it everywhere
        c[t].change(table_gallery, c[t], [c[f"{t}_gallery"], c[f"{t}_paths"]],
                    api_name=f"dataset_{t}_gallery", **hidden)
        open_chain(c[f"{t}_gallery"].select(gallery_pick, c[f"{t}_paths"], c["path"],
                                            api_name=f"dataset_{t}_pick", **hidden),
                   f"dataset_{t}_thumb")
    c["kind"].change(dataset_neighbours, [clip, c["kind"]], c["neighbours"],
                     api_name="dataset_neighbours")


# ---------------------------------------------------------------------------- layout
def build_demo() -> gr.Blocks:
    """The page. Nothing heavy happens here: models load on the first request or warm-up."""
    # gradio's own copies (uploads, webcam recordings, results) older than MMT_APP_CACHE_AGE_S
    # are deleted every 10 min, so a class's clips do not pile up between restarts
    age = env_int("MMT_APP_CACHE_AGE_S", 2 * 3600)
    with gr.Blocks(title="MMT Workbench", delete_cache=(600, age)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            clip = gr.File(label="Video clip (mp4, webm, mkv, mov, avi)", type="filepath",
                           elem_id="clip", scale=2)
            with gr.Column(scale=1):
                example = gr.Dropdown(label="…or a built-in example clip", choices=[],
                                      elem_id="example")
                wb = get_workbench()  # no models load here: the set names only
                models = gr.Radio(wb.set_names(), value=wb.active, elem_id="models",
                                  label="Models (every tab of this page; yours only)")
                models_md = gr.Markdown(elem_id="models-md")
                status = gr.Markdown(elem_id="status")
        with gr.Tabs():
            with gr.Tab("Predict", id="predict"):
                player = gr.Video(label="Your clip", interactive=False, height=240,
                                  elem_id="pred-player")
                with gr.Row():
                    labels = [gr.Label(num_top_classes=5, label=ROLE_TITLES[r], elem_id=f"pred-{r}")
                              for r in ROLES]
                frames = gr.Gallery(label="Sampled frames (model input, before the centre crop)",
                                    columns=8, height=170, elem_id="frames")
                spec = gr.Plot(label="Audio input", elem_id="spectrogram")
                tl_plot, tl_slider, tl_md, tl_click, tl_jump = timeline_panel()
            with gr.Tab("Explain", id="explain"):
                with gr.Row():
                    # Choices arrive at page load; API callers may name any class (checked).
                    target = gr.Dropdown(label="Class to explain", choices=[TOP], value=TOP,
                                         allow_custom_value=True)
                    method_pick = gr.Radio([(METHOD_TITLES.get(n, n), n) for n in METHODS],
                                           value="gradcam", label="Method", elem_id="method")
                    layer = gr.Radio(list(CAM_LAYERS.items()), value=DEFAULT_LAYER,
                                     label="CAM layer")
                    explain_btn = gr.Button("Explain", variant="primary")
                method_md = gr.Markdown(method_info("gradcam"), elem_id="method-info")
                with gr.Row():
                    cam_mmt = gr.Gallery(label="MMT video map", columns=4, height=310,
                                         elem_id="cam-mmt")
                    cam_video = gr.Gallery(label="Video-only map", columns=4, height=310,
                                           elem_id="cam-video")
                audio_plot = gr.Plot(label="Audio map", elem_id="cam-audio")
                explain_md = gr.Markdown(elem_id="explain-md")
            with gr.Tab("Embeddings", id="embeddings"):
                with gr.Row():
                    method = gr.Radio([("UMAP", "umap"), ("t-SNE", "tsne"), ("PCA", "pca")],
                                      value="umap", label="Projection")
                    source = gr.Radio([("MMT: audio / video / fused", "mmt"),
                                       ("audio-only / video-only / MMT (paper Fig. 4)", "models")],
                                      value="mmt", label="Embeddings")
                with gr.Row():
                    plots = [gr.Plot(elem_id=f"emb-{i}") for i in range(3)]
                emb_click = gr.Textbox(visible="hidden", elem_id="emb-click")
                emb_go = gr.Button("open", visible="hidden", elem_id="emb-go")
                scores = gr.Dataframe(headers=["model", "space", "ARI", "HS"], label="Cluster scores",
                                      interactive=False)
                embed_md = gr.Markdown(elem_id="embed-md")
            with gr.Tab("Dataset", id="dataset"):
                dataset = dataset_tab()
            with gr.Tab("Teach", id="teach"):
                teach = teach_tab()
            with gr.Tab("Ablations", id="ablations"):
                abl_btn = gr.Button("Reload")
                abl_table = gr.Dataframe(headers=ABLATION_HEADERS, interactive=False)
                abl_plot = gr.Plot()
                abl_md = gr.Markdown()

        pred_out = [*labels, frames, spec, status]
        explain_out = [cam_mmt, cam_video, audio_plot, explain_md]
        embed_out = [*plots, scores, embed_md]
        # The public endpoints: one input (the clip) for predict, as the API promises.
        ev = clip.upload(predict, clip, pred_out, api_name="predict")
        explain_in = [clip, target, layer, method_pick]
        explain_btn.click(explain, explain_in, explain_out, api_name="explain")
        method_pick.change(method_info, method_pick, method_md, api_name="method_info",
                           api_visibility="private") \
            .success(explain_if_clip, explain_in, explain_out, api_name="method_explain",
                     api_visibility="private")
        gr.on([method.change, source.change], embed, [clip, method, source], embed_out,
              api_name="embed")
        abl_btn.click(ablations, None, [abl_table, abl_plot, abl_md], api_name="ablations")
        # Private chains (named so they never take the public names): an upload or an example
        # fills every tab.
        hidden = {"api_visibility": "private"}
        ev.success(explain, explain_in, explain_out, api_name="upload_explain",
                   **hidden) \
          .success(embed, [clip, method, source], embed_out, api_name="upload_embed", **hidden)
        example.change(use_example, example, clip, api_name="example", **hidden) \
            .success(predict, clip, pred_out, api_name="example_predict", **hidden) \
            .success(explain, explain_in, explain_out, api_name="example_explain",
                     **hidden) \
            .success(embed, [clip, method, source], embed_out, api_name="example_embed", **hidden)
        demo.load(page_load, None, [example, target], api_name="page_load", **hidden)
        clip.change(show_clip, clip, player, api_name="clip_player", **hidden)
        wire_timeline(clip, tl_plot, tl_slider, tl_md, tl_click, tl_jump, target,
                      layer, method_pick, frames, explain_out)
        models.change(switch_models, models, [models_md, target], api_name="models") \
            .success(models_changed, None,
                     [example, *(dataset[k] for k in ("md", "acc", "per_class", "confusion",
                                                     "true", "pred", "cell", "suspicious",
                                                     "neighbours"))],
                     api_name="models_changed", **hidden)
        wire_teach(teach, models, target, models_md)
        wire_dataset(dataset, clip, pred_out, explain_in, explain_out)
        demo.load(page_models, None, [models, models_md], api_name="page_models", **hidden)
        demo.load(None, None, None, js=TIMELINE_CLICK_JS)  # the timeline's click relay
        demo.load(None, None, None, js=PLOT_CLICK_JS)  # the heatmap's and the maps' relays
        # a clicked point of an Embeddings map becomes the current clip in every tab
        emb_go.click(embed_click, emb_click, clip, api_name="embed_click", **hidden) \
            .success(predict, clip, pred_out, api_name="embed_click_predict", **hidden) \
            .success(explain, explain_in, explain_out, api_name="embed_click_explain", **hidden) \
            .success(embed, [clip, method, source], embed_out, api_name="embed_click_embed",
                     **hidden)
        demo.load(ablations, None, [abl_table, abl_plot, abl_md], api_name="page_ablations", **hidden)
        # a leaving tab or a closed gradio_client Client: its run and files go (the idle TTL
        # catches the rest)
        demo.unload(end_session)
        status_btn = gr.Button(visible=False)
        status_out = gr.JSON(visible=False)
        status_btn.click(classroom_status, None, status_out, api_name="classroom",
                         api_visibility="undocumented")
    set_limits(demo)
    return demo


def set_limits(demo: gr.Blocks) -> None:
    """Put every event in its concurrency group (GROUP_OF by handler name, else "light")."""
    for fn in demo.fns.values():
        if fn.fn is None:  # a JavaScript-only event
            continue
        group = GROUP_OF.get(getattr(fn.fn, "__name__", ""), "light")
        fn.concurrency_id, fn.concurrency_limit = group, LIMITS[group]


def end_session(request: gr.Request = None):
    """demo.unload: the session's queued run is dropped, its running one stopped, its clips,
    taught set and downloads deleted."""
    get_workbench().end_session(_session(request))


def classroom_status():
    """API /classroom (undocumented; the benchmark's): the training queue and the sessions."""
    wb = get_workbench()
    return {"train": wb.trainq.depth(), "sessions": len(wb.sessions)}
