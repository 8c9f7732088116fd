"""The Gradio page: Predict, Explain, Embeddings and Ablations tabs over workbench.service.

Handlers are thin: they call the process-wide `Workbench` and turn its arrays into Gradio
values. Every event has an api_name ("predict", "explain", "embed", "ablations"); an upload runs
predict, then explain, then embed, so one upload fills every tab. User-fixable problems (not a
video, corrupt, too long, too large) become a gr.Error toast and the app keeps serving.
"""
from __future__ import annotations

import functools
import traceback

import gradio as gr
import numpy as np

from mmt_core.errors import UserError
from mmt_core.explain import list_explainers

from .service import ROLE_TITLES, get_workbench

TOP = "(top prediction)"
# Grad-CAM layer choices: the block before the last (pytorch-grad-cam's default for Transformers)
# or the last stage-1 block, whose map is 2x finer (where MMT and video-only differ most here).
CAM_LAYERS = {"block before the last": -2, "stage 1 (finer map)": 0}
# Explain methods (mmt_core.explain): name -> one-line description, shown under the picker.
METHODS = list_explainers()
METHOD_TITLES = {"gradcam": "Grad-CAM", "relevance": "Attention relevance",
                 "occlusion": "Occlusion", "audio_contrast": "Audio contrast"}
ROLES = ("mmt", "audio", "video")
INTRO = """# MMT Workbench
Upload a short video clip (or pick a built-in one) to see what the **Multiscale Multimodal
Transformer** predicts next to its audio-only and video-only counterparts, *where* it looks and
listens (Grad-CAM), and where the clip lands among the built-in test clips (embeddings).
The demo models were trained on the built-in *sounding objects* dataset (6 classes)."""


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
def predict(clip):
    """clip → three top-5 Labels, the sampled frames, the spectrogram, notes."""
    wb = get_workbench()
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


@_user_errors
def explain(clip, target, layer=-2, method="gradcam"):
    """clip, class (or TOP), CAM block, method → MMT and video-only map overlays (the sounding
    object's box drawn on built-in clips), MMT's audio map on the spectrogram, and the method's
    pointing scores on the built-in test clips."""
    wb = get_workbench()
    block = CAM_LAYERS.get(layer, layer)  # a choice's value, or its label from an API caller
    if block not in CAM_LAYERS.values():
        raise UserError(f"unknown CAM layer {layer!r}; choose one of {', '.join(CAM_LAYERS)}")
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
    where = next(name for name, b in CAM_LAYERS.items() if b == block)
    layer_note = f" of the {where}" if method == "gradcam" else ""
    md = (f"{title}{layer_note}, for class "
          + ", ".join(f"{ROLE_TITLES[r]}: **{c}**" for r, c in tg.items()) + ".")
    if res["boxes"] is not None:
        md += " White box: the sounding object."
    if method == "audio_contrast":
        md += " (The video-only model has no sound, so no audio contrast.)"
    md += "\n\n**Pointing game** on the built-in test clips:\n" + _pointing_md(res["pointing"])
    video = _thumbs(ov["video"]) if "video" in ov else []
    return _thumbs(ov["mmt"]), video, fig, md


def explain_if_clip(clip, target, layer=-2, method="gradcam"):
    """A method change re-explains the current clip; with no clip yet it changes nothing."""
    if clip is None or clip == "":
        return (gr.update(),) * 4
    return explain(clip, target, layer, method)


@_user_errors
def embed(clip, method, source):
    """clip, projection, source → three scatter plots with the clip starred, ARI/HS table."""
    res = get_workbench().embed(clip, method=method or "umap", source=source or "mmt")
    md = (f"{res['reference_clips']} built-in test clips; ARI / HS of KMeans clusters vs classes "
          "(paper Table 3), higher is better.")
    return (*res["figures"], res["scores"], md)


@_user_errors
def ablations():
    """Table 2 rows from checkpoints/ablations.json as a table and a bar chart."""
    import plotly.graph_objects as go

    rows = get_workbench().ablations()
    if not rows:
        return (None, None, "No ablation results yet: run `notebooks/03_ablations.ipynb` (it "
                "trains each Table 2 row on the built-in dataset with "
                "`mmt_core.ablations.run_ablations` and writes `checkpoints/ablations.json`), "
                "then press Reload.")
    pct = lambda v: None if v is None else round(100 * v, 1)  # noqa: E731
    table = [[name, pct(r.get("top1")), pct(r.get("top5")),
              None if r.get("pointing") is None else round(r["pointing"], 3), r.get("clips"),
              r.get("steps")] for name, r in rows.items()]
    fig = go.Figure(go.Bar(x=[r[0] for r in table], y=[r[1] for r in table],
                           text=[f"{r[1]:.1f}" if r[1] is not None else "" for r in table]))
    split = next(iter(rows.values())).get("split", "test")
    fig.update_layout(title=f"Top-1 accuracy per ablation row (built-in {split} split)", height=360,
                      yaxis_title="top-1 (%)", margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return table, fig, f"{len(table)} rows from `checkpoints/ablations.json`."


@_user_errors
def page_load():
    """Fill the example and class choices (loads the models and writes the examples once)."""
    wb = get_workbench()
    examples = [(p.stem.split("_", 2)[-1].rsplit("_", 1)[0], str(p)) for p in wb.examples()]
    return (gr.update(choices=examples),
            gr.update(choices=[TOP, *wb.class_names], value=TOP))


def use_example(path):
    return path or None


# ---------------------------------------------------------------------------- layout
def build_demo() -> gr.Blocks:
    """The page. Nothing heavy happens here: models load on the first request or warm-up."""
    with gr.Blocks(title="MMT Workbench") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            clip = gr.File(label="Video clip (mp4, webm, mkv, mov, avi)", type="filepath",
                           elem_id="clip", scale=2)
            with gr.Column(scale=1):
                example = gr.Dropdown(label="…or a built-in example clip", choices=[],
                                      elem_id="example")
                status = gr.Markdown(elem_id="status")
        with gr.Tabs():
            with gr.Tab("Predict", id="predict"):
                with gr.Row():
                    labels = [gr.Label(num_top_classes=5, label=ROLE_TITLES[r], elem_id=f"pred-{r}")
                              for r in ROLES]
                frames = gr.Gallery(label="Sampled frames (model input, before the centre crop)",
                                    columns=8, height=170, elem_id="frames")
                spec = gr.Plot(label="Audio input", elem_id="spectrogram")
            with gr.Tab("Explain", id="explain"):
                with gr.Row():
                    # Choices arrive at page load; API callers may name any class (checked).
                    target = gr.Dropdown(label="Class to explain", choices=[TOP], value=TOP,
                                         allow_custom_value=True)
                    method_pick = gr.Radio([(METHOD_TITLES.get(n, n), n) for n in METHODS],
                                           value="gradcam", label="Method", elem_id="method")
                    layer = gr.Radio(list(CAM_LAYERS.items()), value=-2, label="CAM layer")
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
                scores = gr.Dataframe(headers=["model", "space", "ARI", "HS"], label="Cluster scores",
                                      interactive=False)
                embed_md = gr.Markdown()
            with gr.Tab("Ablations", id="ablations"):
                abl_btn = gr.Button("Reload")
                abl_table = gr.Dataframe(headers=["row", "top-1 (%)", "top-5 (%)", "pointing", "clips",
                                                  "steps"],
                                         interactive=False)
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
        demo.load(ablations, None, [abl_table, abl_plot, abl_md], api_name="page_ablations", **hidden)
    return demo
