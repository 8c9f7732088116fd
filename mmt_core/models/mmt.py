"""MMT, the multiscale multimodal Transformer (paper Fig. 2): a multiscale video encoder (MViTv2) and
a multiscale audio encoder (MAT), fused by the AVBottleneck, classified from [E_CLS^V, E_CLS^A].

One class serves every registry variant:
- `modalities="av"`, `fusion="bottleneck"`: the full MMT (eq. 5), one linear head per task on the
  concatenated class embeddings;
- `fusion="avg"`: no fusion tokens; an audio head and a video head, `head_logits` is their average
  and `aux_logits` holds each (Table 2, "Avg");
- `modalities="a"` / `"v"`: only that encoder (MAT, or MViTv2 video); `"image"`: a 2-D MViTv2 on
  images (its embedding fills the `video_*` fields).
g_A / g_V (Linear to `proj_dim`) are always computed, so the contrastive losses work on every model.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .fusion import AVBottleneck
from .multiscale import EncoderConfig, MultiscaleEncoder, grid_to_map
from .output import ModelOutput, cam_block_index


def head_sizes(num_classes: int | dict[str, int]) -> dict[str, int]:
    """int -> {"label": n}; dict head -> classes (e.g. EPIC-100 {"verb": 97, "noun": 300})."""
    heads = {"label": num_classes} if isinstance(num_classes, int) else dict(num_classes or {})
    if not heads or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in heads.values()):
        raise ValueError(f"num_classes must be a positive int or a dict head->int, got {num_classes!r}")
    return heads


class MMT(nn.Module):
    def __init__(self, *, video: EncoderConfig | None = None, audio: EncoderConfig | None = None,
                 num_classes: int | dict[str, int], modalities: str = "av",
                 fusion: str = "bottleneck", fusion_blocks: int = 4, fusion_tokens: int = 4,
                 proj_dim: int = 256, drop_path: float = 0.0, dropout: float = 0.0,
                 aux_heads: bool = False, modality_dropout: float = 0.0):
        super().__init__()
        if modalities not in ("av", "a", "v", "image"):
            raise ValueError(f"modalities must be 'av', 'a', 'v' or 'image', got {modalities!r}")
        if fusion not in ("bottleneck", "avg"):
            raise ValueError(f"fusion must be 'bottleneck' or 'avg', got {fusion!r}")
        if proj_dim < 1 or not 0.0 <= dropout < 1.0 or not 0.0 <= drop_path < 1.0:
            raise ValueError("need proj_dim >= 1 and dropout, drop_path in [0, 1)")
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {modality_dropout}")
        want_v, want_a = modalities in ("av", "v", "image"), modalities in ("av", "a")
        if (want_v and video is None) or (want_a and audio is None):
            raise ValueError(f"modalities {modalities!r} needs the matching encoder config(s)")
        self.modalities = modalities
        self.fusion = fusion if modalities == "av" else "none"
        self.video = MultiscaleEncoder(video, drop_path=drop_path) if want_v else None
        self.audio = MultiscaleEncoder(audio, drop_path=drop_path) if want_a else None
        self.bottleneck = None
        if self.fusion == "bottleneck":
            self.bottleneck = AVBottleneck(video=self.video, audio=self.audio,
                                           num_blocks=fusion_blocks, num_tokens=fusion_tokens)
        spec = {}
        if self.video is not None:
            spec["image" if modalities == "image" else "video"] = (video.in_chans, *video.input_size)
        if self.audio is not None:
            spec["audio"] = (audio.in_chans, *audio.input_size)
        self.input_spec = spec
        heads = head_sizes(num_classes)
        self.dropout = nn.Dropout(dropout)
        dv = self.video.num_features if self.video is not None else 0
        da = self.audio.num_features if self.audio is not None else 0
        if self.fusion == "avg":
            self.video_heads = nn.ModuleDict({h: nn.Linear(dv, n) for h, n in heads.items()})
            self.audio_heads = nn.ModuleDict({h: nn.Linear(da, n) for h, n in heads.items()})
        else:  # one classifier on [E_CLS^V, E_CLS^A] (or the one modality present)
            self.heads = nn.ModuleDict({h: nn.Linear(dv + da, n) for h, n in heads.items()})
        # Own-data options of the fused model (off by default, the paper has neither):
        # aux_heads: a head on E_CLS^V alone and one on E_CLS^A alone (loss.aux_ce weighs them);
        # modality_dropout p: in training, a sample loses one modality's class embedding (zeros
        # in the fused head's input) with probability p, half the time each modality.
        self.aux_heads = aux_heads and self.fusion == "bottleneck"
        self.modality_dropout = modality_dropout if self.fusion == "bottleneck" else 0.0
        if self.aux_heads:
            self.video_heads = nn.ModuleDict({h: nn.Linear(dv, n) for h, n in heads.items()})
            self.audio_heads = nn.ModuleDict({h: nn.Linear(da, n) for h, n in heads.items()})
        self.video_proj = nn.Linear(dv, proj_dim) if self.video is not None else None  # g_V
        self.audio_proj = nn.Linear(da, proj_dim) if self.audio is not None else None  # g_A
        for m in (self.video_proj, self.audio_proj, *self._head_modules()):
            if m is not None:
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in every block of both encoders; the fused blocks too, since
        the AVBottleneck runs them through the encoders' `run_blocks`."""
        for enc in (self.video, self.audio):
            if enc is not None:
                enc.set_grad_checkpointing(enable)

    def _head_modules(self):
        heads = list(self.heads.values()) if self.fusion != "avg" else []
        if self.fusion == "avg" or self.aux_heads:
            heads += [*self.video_heads.values(), *self.audio_heads.values()]
        return heads

    def _inputs(self, video, audio, image) -> dict[str, Tensor]:
        given = {k: v for k, v in (("video", video), ("audio", audio), ("image", image)) if v is not None}
        missing = [k for k in self.input_spec if k not in given]
        extra = [k for k in given if k not in self.input_spec]
        if missing or extra:
            raise ValueError(f"this model (modalities {self.modalities!r}) takes "
                             f"{sorted(self.input_spec)}; missing {missing}, unexpected {extra}")
        return given

    def forward(self, *, video: Tensor | None = None, audio: Tensor | None = None,
                image: Tensor | None = None) -> ModelOutput:
        x = self._inputs(video, audio, image)
        v_emb = a_emb = None
        if self.bottleneck is not None:
            xv, gv = self.video.embed(x["video"])
            xa, ga = self.audio.embed(x["audio"])
            K = self.bottleneck.num_blocks
            xv, gv = self.video.run_blocks(xv, gv, 0, len(self.video.blocks) - K)
            xa, ga = self.audio.run_blocks(xa, ga, 0, len(self.audio.blocks) - K)
            xv, xa = self.bottleneck(self.video, self.audio, xv, gv, xa, ga)
            L = self.bottleneck.num_tokens
            v_emb = self.video.forward_head(self.video.norm(xv), self.video.num_prefix + L)
            a_emb = self.audio.forward_head(self.audio.norm(xa), self.audio.num_prefix + L)
        else:
            if self.video is not None:
                v_emb = self.video(x.get("video", x.get("image")))  # E_CLS^V, (B, D_v)
            if self.audio is not None:
                a_emb = self.audio(x["audio"])  # E_CLS^A, (B, D_a)
        out = ModelOutput(head_logits={}, video_embed=v_emb, audio_embed=a_emb)
        if v_emb is not None:
            out.video_proj = self.video_proj(v_emb)
        if a_emb is not None:
            out.audio_proj = self.audio_proj(a_emb)
        if self.fusion == "avg":
            lv = {h: m(self.dropout(v_emb)) for h, m in self.video_heads.items()}
            la = {h: m(self.dropout(a_emb)) for h, m in self.audio_heads.items()}
            out.aux_logits = {"video": lv, "audio": la}
            out.head_logits = {h: (lv[h] + la[h]) / 2 for h in lv}
        else:
            if self.training and self.modality_dropout > 0 and v_emb is not None \
                    and a_emb is not None:
                keep_v, keep_a = modality_keep(v_emb.shape[0], self.modality_dropout,
                                               v_emb.device)
                out.video_embed, out.audio_embed = v_emb * keep_v[:, None], a_emb * keep_a[:, None]
            feats = self.dropout(out.fused_embed)  # [E_CLS^V, E_CLS^A], (B, D_v + D_a)
            out.head_logits = {h: m(feats) for h, m in self.heads.items()}
            if self.aux_heads:
                out.unimodal_logits = {
                    "video": {h: m(self.dropout(v_emb)) for h, m in self.video_heads.items()},
                    "audio": {h: m(self.dropout(a_emb)) for h, m in self.audio_heads.items()}}
        return out

    def cam_target(self, modality: str, block: int = -2) -> tuple[nn.Module, callable]:
        """(a block of that encoder, tokens -> (B, C, *grid) of that block's output). The default
        is the block before the last (pytorch-grad-cam's choice for Transformers); an earlier
        block gives a finer map (e.g. 0: the stage-1 grid)."""
        enc = {"video": self.video, "image": self.video, "audio": self.audio}.get(modality)
        if enc is None or modality not in self.input_spec:
            raise ValueError(f"this model takes {sorted(self.input_spec)}, not {modality!r}")
        idx = cam_block_index(len(enc.blocks), block, modality)

        def reshape(tokens: Tensor) -> Tensor:
            # The encoder records each block's output grid before running it, so this also works
            # inside a forward hook of that block.
            return grid_to_map(tokens, enc.grids[idx])  # (B, C, T, H, W) or (B, C, F, N)

        return enc.blocks[idx], reshape


def modality_keep(batch: int, p: float, device=None) -> tuple[Tensor, Tensor]:
    """(keep_video, keep_audio) float masks (B,): with probability p a sample drops exactly one
    modality (video or audio, equally likely); never both."""
    r = torch.rand(batch, device=device)
    drop_v = r < p / 2
    drop_a = (r >= p / 2) & (r < p)
    return (~drop_v).float(), (~drop_a).float()


def build_mmt(*, video: EncoderConfig | None, audio: EncoderConfig | None, num_classes,
              modalities: str, **options) -> MMT:
    """Build with keyword checking that names the accepted options."""
    allowed = {"fusion", "fusion_blocks", "fusion_tokens", "proj_dim", "drop_path", "dropout",
               "aux_heads", "modality_dropout"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown model options {unknown}; accepted: {sorted(allowed)} and "
                         "num_classes, num_frames, image_size, mel_bins, audio_frames, modalities")
    return MMT(video=video, audio=audio, num_classes=num_classes, modalities=modalities, **options)

