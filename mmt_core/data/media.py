"""Decode frames + audio from one media file with PyAV: a window of a clip, memory bounded.

`decode` seeks to the chosen window and decodes only up to its end, keeping only the T frames it
samples, so a 2-hour EPIC video costs what its 3-second segment costs. Audio is resampled to mono
float32 at `sample_rate` (16 kHz by default) and cut to the same window, zero-padded where the
file has no sound. Every problem a user can fix raises MediaError with one line naming it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ..errors import MediaError

MAX_PIXELS = 7680 * 4320  # refuse frames above 8K: decoding them only to downscale is a trap
MAX_FRAMES = 1024  # refuse asking for more sampled frames than this per window
DECODE_TIME_LIMIT = 120.0  # seconds one decode() may take before it gives up


@dataclass
class MediaInfo:
    duration: float  # seconds (container duration, else the longest stream)
    has_video: bool
    has_audio: bool
    width: int  # 0 without video
    height: int
    fps: float  # average frame rate; 0.0 when unknown / no video
    sample_rate: int  # 0 without audio
    channels: int


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, H, W, 3) RGB; (0, 0, 0, 3) when video=False
    audio: np.ndarray  # float32 (samples,) mono at sample_rate; length = clip_seconds * sample_rate
    sample_rate: int
    has_audio: bool  # False: the file has no audio stream (audio is zeros)
    start: float  # window start in seconds from the start of the file
    duration: float  # the whole file's duration in seconds
    times: np.ndarray  # float64 (T,) time of each sampled frame in seconds


def _open(path):
    """Open a path, or a seekable file-like object (e.g. `io.BytesIO` of a shard member; its
    `.name`, when set, names it in errors)."""
    if hasattr(path, "read"):
        try:
            return av.open(path)
        except (av.error.InvalidDataError, av.error.EOFError) as e:
            raise MediaError(f"not a readable media file: {_name(path)} "
                             f"({type(e).__name__})") from None
        except (av.error.FFmpegError, ValueError, OSError) as e:
            raise MediaError(f"cannot open {_name(path)}: {e}") from None
    p = Path(path)
    if not p.exists():
        raise MediaError(f"file not found: {p}")
    if p.is_dir():
        raise MediaError(f"is a directory, not a media file: {p}")
    if p.stat().st_size == 0:
        raise MediaError(f"empty file: {p}")
    try:
        return av.open(str(p))
    except (av.error.InvalidDataError, av.error.EOFError) as e:
        raise MediaError(f"not a readable media file: {p} ({type(e).__name__})") from None
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot open {p}: {e.strerror or e}") from None
    except (ValueError, OSError) as e:
        raise MediaError(f"cannot open {p}: {e}") from None


def _name(source) -> str:
    return str(getattr(source, "name", "") or "<in-memory media>")


def _offset(container) -> float:
    """The container's start time: stream timestamps are relative to it (webm/ts often != 0)."""
    return container.start_time / av.time_base if container.start_time is not None else 0.0


def _scan_duration(container) -> float:
    """Seconds from the container's start to the end of its last packet, found by demuxing (no
    decoding), then the container is rewound. For files whose header holds no duration at all:
    a browser's MediaRecorder writes webm that way (the app's webcam recordings), as does
    FFmpeg's `-live 1`."""
    offset, end = _offset(container), 0.0
    for pkt in container.demux():
        if pkt.pts is not None and pkt.time_base is not None:
            end = max(end, float((pkt.pts + (pkt.duration or 0)) * pkt.time_base))
    container.seek(0)
    return max(0.0, end - offset)


def _info(container, path) -> MediaInfo:
    v = container.streams.video[0] if container.streams.video else None
    a = container.streams.audio[0] if container.streams.audio else None
    duration = container.duration / av.time_base if container.duration else 0.0
    if duration <= 0:  # some muxers only know stream durations
        for s in (v, a):
            if s is not None and s.duration and s.time_base:
                duration = max(duration, float(s.duration * s.time_base))
    if duration <= 0 and (v is not None or a is not None):
        duration = _scan_duration(container)
    fps = float(v.average_rate) if v is not None and v.average_rate else 0.0
    return MediaInfo(
        duration=duration, has_video=v is not None, has_audio=a is not None,
        width=v.codec_context.width if v is not None else 0,
        height=v.codec_context.height if v is not None else 0, fps=fps,
        sample_rate=a.codec_context.sample_rate if a is not None else 0,
        channels=a.codec_context.channels if a is not None else 0)


def probe(path) -> MediaInfo:
    """Duration, streams and formats of a media file (path or file-like), without decoding it."""
    with _open(path) as container:
        return _info(container, path)


def choose_window(duration: float, clip_seconds: float, *, start: float | None = None,
                  end: float | None = None, view: int | None = None, num_views: int = 1,
                  rng: np.random.Generator | None = None) -> tuple[float, float]:
    """(window start, content end) in seconds.

    The region to draw from is [start, end] when both are given (an EPIC segment), else the whole
    file. `start` without `end` fixes the window start. Else view i of N evenly spaced windows
    (SlowFast convention: the centre for N=1, both ends included for N>1), else a uniform random
    start from `rng`. The content end is where real media stops inside the window.
    """
    if clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
    r0 = 0.0 if start is None else max(0.0, float(start))
    r1 = duration if end is None else min(duration, float(end))
    if r1 <= r0:
        raise MediaError(f"empty window: start {r0:.2f}s, end {r1:.2f}s, file {duration:.2f}s long")
    slack = max(0.0, r1 - r0 - clip_seconds)
    if start is not None and end is None:
        w0 = r0
    elif rng is not None and view is None:
        w0 = r0 + float(rng.uniform(0.0, slack)) if slack > 0 else r0
    else:
        n, i = max(1, num_views), 0 if view is None else view
        if not 0 <= i < n:
            raise ValueError(f"view {i} out of range for num_views={n}")
        w0 = r0 + (slack / 2 if n == 1 else slack * i / (n - 1))
    return w0, min(r1, w0 + clip_seconds)


def _check_time(t0: float, limit: float, path) -> None:
    if time.monotonic() - t0 > limit:
        raise MediaError(f"decoding took longer than {limit:.0f}s: {path}")


def _frame_time(frame, tb_fallback: float, offset: float) -> float:
    if frame.time is not None:
        return float(frame.time) - offset
    return tb_fallback


def _decode_video(container, times: np.ndarray, w0: float, offset: float, size: tuple[int, int],
                  duration: float, t0: float, limit: float, path) -> np.ndarray:
    """Frames shown at `times`: seek before w0, walk forward, keep only the frames needed."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threads: decoding a window is the hot loop of training
    if w0 > 0.5 and stream.time_base:
        container.seek(int((w0 + offset) / stream.time_base), stream=stream, backward=True)
    w, h = size
    out: list[np.ndarray | None] = [None] * len(times)
    prev, prev_arr, j, n, t = None, None, 0, 0, 0.0
    fps = float(stream.average_rate) if stream.average_rate else 25.0
    try:
        for frame in container.decode(stream):
            t = _frame_time(frame, n / fps, offset)
            n += 1
            while j < len(times) and t > times[j] + 1e-6:
                if prev_arr is None:  # first decoded frame is already past the target
                    prev_arr = (frame if prev is None else prev).to_ndarray(format="rgb24", width=w, height=h)
                out[j] = prev_arr
                j += 1
            if j >= len(times):
                break
            prev, prev_arr = frame, None
            if n % 32 == 1:
                _check_time(t0, limit, path)
    except av.error.FFmpegError as e:
        if prev is None:
            raise MediaError(f"corrupt or truncated video stream in {path}: {e.strerror or e}") from None
    if prev is None and j == 0:
        raise MediaError(f"no decodable video frames in {path} (truncated or corrupt file?)")
    if j < len(times) and times[j] < duration - 1.0:  # frames stop long before the file should
        raise MediaError(f"truncated file: video stops near {t:.1f}s of {duration:.1f}s: {path}")
    if j < len(times):  # window runs past the last frame: hold the last frame
        last = prev.to_ndarray(format="rgb24", width=w, height=h) if prev_arr is None else prev_arr
        for k in range(j, len(times)):
            out[k] = last
    return np.stack(out)  # (T, H, W, 3)


def _decode_audio(container, w0: float, w1: float, offset: float, sample_rate: int, total: int,
                  t0: float, limit: float, path) -> np.ndarray:
    """Mono float32 samples of [w0, w1) at sample_rate, placed in a zero buffer of `total`."""
    stream = container.streams.audio[0]
    if stream.time_base:  # always: the video pass may have moved the demuxer past w0
        # 0.2 s of pre-roll: AAC/MP3/Opus decoders need a frame or two to converge after a seek
        target = max(0.0, w0 - 0.2) + offset
        container.seek(max(0, int(target / stream.time_base)), stream=stream, backward=True)
    # keep the channels and average them after: FFmpeg's own mono downmix scales stereo by sqrt(2)
    resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
    chunks: list[np.ndarray] = []
    first_t = None
    try:
        for i, frame in enumerate(container.decode(stream)):
            if frame.time is None:
                continue
            t = float(frame.time) - offset
            if first_t is None:
                first_t = t
            if t > w1:
                break
            for rf in resampler.resample(frame):
                chunks.append(rf.to_ndarray().mean(0))  # (C, n) -> (n,)
            if i % 64 == 1:
                _check_time(t0, limit, path)
        for rf in resampler.resample(None):
            chunks.append(rf.to_ndarray().mean(0))
    except av.error.FFmpegError:
        pass  # a truncated audio tail: keep what decoded, the rest stays silent
    out = np.zeros(total, dtype=np.float32)
    if first_t is None or not chunks:
        return out
    samples = np.concatenate(chunks)
    skip = int(round((w0 - first_t) * sample_rate))  # >0: decoded from before w0 (seek lands early)
    src = samples[max(0, skip):]
    dst0 = max(0, -skip)  # audio starting after w0 leaves leading silence
    n = max(0, min(len(src), total - dst0, int(round((w1 - w0) * sample_rate)) - dst0))
    out[dst0:dst0 + n] = src[:n]
    return out


def _target_size(width: int, height: int, max_side: int | None,
                 short_side: int | None) -> tuple[int, int]:
    """Downscale only: long side <= max_side and short side down to short_side (if larger)."""
    s = 1.0
    if max_side and max(width, height) > max_side:
        s = max_side / max(width, height)
    if short_side and min(width, height) * s > short_side:
        s = short_side / min(width, height)
    if s == 1.0:
        return width, height
    return max(2, int(round(width * s))), max(2, int(round(height * s)))


def _check_decodable(info: MediaInfo, path, *, video: bool, span: float,
                     max_seconds: float) -> None:
    """MediaError for a file decode() cannot use: no stream, no duration, too long, too big."""
    if video and not info.has_video:
        raise MediaError(f"no video stream in {path}")
    if not info.has_video and not info.has_audio:
        raise MediaError(f"no audio or video stream in {path}")
    if info.duration <= 0:
        raise MediaError(f"zero or unknown duration: {path}")
    if span > max_seconds:
        raise MediaError(f"file too long: {span:.0f}s > {max_seconds:.0f}s limit: {path}")
    if video and info.width * info.height > MAX_PIXELS:
        raise MediaError(f"frame size {info.width}x{info.height} above the 8K limit: {path}")
    if video and (info.width <= 0 or info.height <= 0):
        raise MediaError(f"video stream without a frame size: {path}")


def _frame_times(w0: float, w1: float, num_frames: int) -> np.ndarray:
    """Centres of T equal bins over [w0, w1]: (T,) seconds (16 over 2.13 s = a 4-frame stride
    at 30 fps, MViTv2's 16x4 sampling)."""
    return w0 + (np.arange(num_frames) + 0.5) * (w1 - w0) / num_frames


def decode(path, *, num_frames: int, clip_seconds: float, sample_rate: int = 16000,
           start: float | None = None, end: float | None = None, view: int | None = None,
           num_views: int = 1, rng: np.random.Generator | None = None, max_seconds: float = 600,
           max_side: int | None = None, short_side: int | None = None, video: bool = True,
           audio: bool = True,
           time_limit: float = DECODE_TIME_LIMIT) -> Clip:
    """Decode `num_frames` evenly spaced frames and the audio of one window of `path` (a path, or
    a seekable file-like object such as `io.BytesIO(shard_member_bytes)`).

    The window is chosen by `choose_window` (start/end, view of num_views, or random from rng).
    Frames sit at the centres of T equal bins of the window's real content. `video=False` skips
    frame decoding (then a file without a video stream is accepted); `audio=False` returns zeros
    without decoding audio. `max_side` / `short_side` downsize frames in FFmpeg's scaler while
    converting to RGB (much cheaper than converting full HD frames and resizing them later).
    """
    return _decode(path, num_frames=num_frames, clip_seconds=clip_seconds,
                   sample_rate=sample_rate, start=start, end=end, rng=rng,
                   audio_window=dict(view=view, num_views=num_views), video_windows=None,
                   max_seconds=max_seconds, max_side=max_side, short_side=short_side,
                   video=video, audio=audio, time_limit=time_limit)[0]


def decode_views(path, *, num_frames: int, clip_seconds: float, video_seconds: float,
                 num_views: int = 1, sample_rate: int = 16000, start: float | None = None,
                 end: float | None = None, rng: np.random.Generator | None = None,
                 max_seconds: float = 600, max_side: int | None = None,
                 short_side: int | None = None, video: bool = True, audio: bool = True,
                 time_limit: float = DECODE_TIME_LIMIT) -> list[Clip]:
    """`num_views` clips of one audio window, decoded in ONE pass (the audio once, the union of
    the views' frame times once); every clip holds the same audio array.

    The audio window (clip_seconds) is drawn at random from `rng`, else it is the centre window
    (or start/end, as in `decode`). Each view's frames span a video window of `video_seconds`
    inside it: drawn at random (rng: training; two views = the two IMC views), else view i of
    num_views evenly spaced, both ends included (the MViTv2/SlowFast test protocol).
    video_seconds <= 0, or not shorter than the audio window, = the audio window itself: all views
    then share the same frames (decode once, augment twice).
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    return _decode(path, num_frames=num_frames, clip_seconds=clip_seconds,
                   sample_rate=sample_rate, start=start, end=end, rng=rng,
                   audio_window=dict(view=None if rng is not None else 0, num_views=1),
                   video_windows=(video_seconds, num_views), max_seconds=max_seconds,
                   max_side=max_side, short_side=short_side, video=video, audio=audio,
                   time_limit=time_limit)


def _decode(path, *, num_frames, clip_seconds, sample_rate, start, end, rng, audio_window: dict,
            video_windows, max_seconds, max_side, short_side, video, audio,
            time_limit) -> list[Clip]:
    """decode / decode_views: the audio window from choose_window(**audio_window); the video
    windows: None = the audio window, else (video_seconds, views) inside it."""
    if num_frames < 1 or num_frames > MAX_FRAMES:
        raise MediaError(f"num_frames must be in 1..{MAX_FRAMES}, got {num_frames}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    t0 = time.monotonic()
    src, path = path, (_name(path) if hasattr(path, "read") else path)  # path: for messages
    with _open(src) as container:
        info = _info(container, path)
        # the cap guards against decoding hours of media; a segment of a long video (EPIC) is fine
        span = (min(end, info.duration) - (start or 0.0)) if end is not None else info.duration
        _check_decodable(info, path, video=video, span=span, max_seconds=max_seconds)
        w0, w1 = choose_window(info.duration, clip_seconds, start=start, end=end, rng=rng,
                               **audio_window)
        if video_windows is None:
            bounds = [(w0, w1)]
        else:
            seconds, n = video_windows
            if seconds <= 0 or seconds >= w1 - w0:
                bounds = [(w0, w1)] * n
            else:  # inside the audio window: random (training) or view i of n (test)
                bounds = [choose_window(info.duration, seconds, start=w0, end=w1, view=v,
                                        num_views=n, rng=rng)
                          for v in ([None] * n if rng is not None else range(n))]
        per_view = [_frame_times(a, b, num_frames) for a, b in bounds]  # V x (T,)
        one_window = len(set(bounds)) == 1
        if one_window:  # one window (or views sharing it): its frames, decoded once
            uniq, inverse = per_view[0], np.tile(np.arange(num_frames), len(bounds))
        else:  # the union of the windows' frame times, in order; overlaps decode once
            uniq, inverse = np.unique(np.round(np.concatenate(per_view), 6), return_inverse=True)
        offset = _offset(container)
        if video:
            size = _target_size(info.width, info.height, max_side, short_side)
            frames = _decode_video(container, uniq, min(b[0] for b in bounds), offset, size,
                                   info.duration, t0, time_limit, path)  # (U, H, W, 3)
        else:
            frames = np.zeros((0, 0, 0, 3), dtype=np.uint8)
        total = int(round(clip_seconds * sample_rate))
        has_audio = info.has_audio
        if audio and has_audio:
            wav = _decode_audio(container, w0, w1, offset, sample_rate, total, t0, time_limit, path)
        else:
            wav = np.zeros(total, dtype=np.float32)
    clips = []
    for k, t in enumerate(per_view):
        idx = inverse[k * num_frames:(k + 1) * num_frames]
        clips.append(Clip(frames=frames if one_window or not video else frames[idx], audio=wav,
                          sample_rate=sample_rate, has_audio=has_audio, start=w0,
                          duration=info.duration, times=t))
    return clips


def decode_windows(path: str | Path, starts, *, num_frames: int, clip_seconds: float,
                   sample_rate: int = 16000, max_seconds: float = 600,
                   short_side: int | None = None,
                   time_limit: float = DECODE_TIME_LIMIT) -> list[Clip]:
    """Clips of several windows of one file (window k starts at starts[k] and lasts
    clip_seconds, cut at the file's end) in ONE pass: the union of their frame times is decoded
    once (overlapping windows share frames), the audio once. Each Clip is what
    `decode(path, start=starts[k], ...)` gives, frames sampled the same way."""
    if num_frames < 1 or num_frames > MAX_FRAMES:
        raise MediaError(f"num_frames must be in 1..{MAX_FRAMES}, got {num_frames}")
    t0 = time.monotonic()
    with _open(path) as container:
        info = _info(container, path)
        _check_decodable(info, path, video=True, span=info.duration, max_seconds=max_seconds)
        bounds = [choose_window(info.duration, clip_seconds, start=s) for s in starts]
        times = np.concatenate([_frame_times(w0, w1, num_frames) for w0, w1 in bounds])  # (K*T,)
        uniq, inverse = np.unique(np.round(times, 6), return_inverse=True)
        offset = _offset(container)
        size = _target_size(info.width, info.height, None, short_side)
        frames = _decode_video(container, uniq, float(uniq[0]), offset, size, info.duration, t0,
                               time_limit, path)  # (U, H, W, 3)
        total = int(round(info.duration * sample_rate))
        wav = (_decode_audio(container, 0.0, info.duration, offset, sample_rate, total, t0,
                             time_limit, path) if info.has_audio
               else np.zeros(total, np.float32))
    per = int(round(clip_seconds * sample_rate))
    clips = []
    for k, (w0, w1) in enumerate(bounds):
        a = int(round(w0 * sample_rate))
        audio = np.zeros(per, np.float32)
        part = wav[a:a + min(per, int(round((w1 - w0) * sample_rate)))]
        audio[:len(part)] = part
        idx = inverse[k * num_frames:(k + 1) * num_frames]
        clips.append(Clip(frames=frames[idx], audio=audio, sample_rate=sample_rate,
                          has_audio=info.has_audio, start=w0, duration=info.duration,
                          times=times[k * num_frames:(k + 1) * num_frames]))
    return clips
