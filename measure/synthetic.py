"""Synthetic DSEC-style dataset: simulated event frames + real H.264 clips of the same scene.

The scene is a smooth random texture drifting across the view plus a few moving disks.
Events follow the standard DVS model: a pixel fires an event of polarity ``sign(dL)`` each
time its log intensity moves ``threshold`` away from the level at its last event. Events of
the clip window are accumulated into one frame, EventGPT style (positive red, negative blue,
on white or black). The RGB frames of the same scene are encoded to MP4 (libx264, else
mpeg4; PyAV, else OpenCV), so stage 1 of the target does real video decoding. The layout is
the one :mod:`measure.dataset` reads; ``synthetic.json`` records the encoder actually used.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

QUERIES = (
    "What are the key elements in this scene?",
    "Describe what is happening in this driving scene.",
    "Are there any pedestrians or vehicles ahead, and where are they moving?",
    "What should the driver pay attention to right now?",
    "Describe the motion of the objects in front of the camera.",
    "Is it safe to turn left at this moment? Explain briefly.",
)
RESOLUTIONS = {"small": (320, 240), "seed": (640, 480)}


@dataclass
class SynthConfig:
    n_samples: int = 30
    width: int = 320
    height: int = 240
    duration_s: float = 1.0
    fps: int = 30
    seed: int = 0
    threshold: float = 0.2      # log-intensity contrast threshold of the event model
    substeps: int = 4           # event-model time steps per video frame
    event_window_s: float = 0.1  # events of the last window of the clip make the event frame
    background: str = "white"   # event frame background: "white" | "black"
    video_format: str = "mp4"   # "mp4" | "frames"


class _Scene:
    """Drifting texture + moving disks; ``intensity(t)`` in (0, 1], ``rgb(t)`` uint8."""

    def __init__(self, rng: np.random.Generator, w: int, h: int):
        self.w, self.h = w, h
        tw, th = w + 64, h + 64  # texture larger than the view so it can drift
        coarse = rng.random((th // 16 + 2, tw // 16 + 2))
        self.texture = 0.15 + 0.7 * _upsample(coarse, th, tw)
        self.tint = rng.uniform(0.4, 1.0, size=3)
        self.velocity = rng.uniform(-40, 40, size=2)  # texture drift, px/s
        n = int(rng.integers(2, 5))
        self.disks = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-150, 150), rng.uniform(-60, 60),
                       rng.uniform(8, h / 6), rng.choice([0.05, 0.95])) for _ in range(n)]
        self.yy, self.xx = np.mgrid[0:h, 0:w]

    def intensity(self, t: float) -> np.ndarray:
        ox = int(32 + self.velocity[0] * t) % 64
        oy = int(32 + self.velocity[1] * t) % 64
        img = self.texture[oy:oy + self.h, ox:ox + self.w].copy()
        for x0, y0, vx, vy, r, level in self.disks:
            cx, cy = (x0 + vx * t) % self.w, (y0 + vy * t) % self.h
            img[(self.xx - cx) ** 2 + (self.yy - cy) ** 2 < r * r] = level
        return img

    def rgb(self, t: float) -> np.ndarray:
        return (np.clip(self.intensity(t)[..., None] * self.tint, 0, 1) * 255).astype(np.uint8)


def _upsample(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a coarse grid (smooth texture without scipy)."""
    ys, xs = np.linspace(0, a.shape[0] - 1, h), np.linspace(0, a.shape[1] - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, a.shape[0] - 1), np.minimum(x0 + 1, a.shape[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def simulate_events(scene: _Scene, duration_s: float, steps: int, threshold: float) -> dict[str, np.ndarray]:
    """DVS events (x, y, t [s], polarity +-1) of ``scene`` over ``duration_s`` in ``steps`` steps."""
    ref = np.log(scene.intensity(0.0) + 1e-3)
    xs, ys, ts, ps = [], [], [], []
    for k in range(1, steps + 1):
        t = duration_s * k / steps
        diff = np.log(scene.intensity(t) + 1e-3) - ref
        n = np.floor(np.abs(diff) / threshold).astype(np.int64)
        y, x = np.nonzero(n)
        if len(x):
            count, pol = n[y, x], np.sign(diff[y, x]).astype(np.int8)
            xs.append(np.repeat(x, count))
            ys.append(np.repeat(y, count))
            ps.append(np.repeat(pol, count))
            ts.append(np.full(int(count.sum()), t))
            ref[y, x] += pol * count * threshold
    if not xs:
        empty = np.zeros(0, dtype=np.int64)
        return {"x": empty, "y": empty, "t": empty.astype(float), "p": empty.astype(np.int8)}
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "t": np.concatenate(ts), "p": np.concatenate(ps)}


def event_frame(events: dict[str, np.ndarray], w: int, h: int, background: str = "white",
                since_s: float = 0.0) -> np.ndarray:
    """Accumulate events with ``t >= since_s`` into an RGB frame: net positive -> red, negative -> blue."""
    keep = events["t"] >= since_s
    net = np.zeros((h, w), dtype=np.int64)
    np.add.at(net, (events["y"][keep], events["x"][keep]), events["p"][keep].astype(np.int64))
    img = np.full((h, w, 3), 255 if background == "white" else 0, dtype=np.uint8)
    img[net > 0] = (255, 0, 0)
    img[net < 0] = (0, 0, 255)
    return img


def video_encoder() -> tuple[str, str]:
    """(library, codec) used to write MP4s: PyAV with libx264 (else mpeg4), or OpenCV mp4v."""
    if importlib.util.find_spec("av") is not None:
        import av

        return "pyav", "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if importlib.util.find_spec("cv2") is not None:
        return "opencv", "mp4v"
    raise RuntimeError("cannot write MP4: install PyAV (pip install av) or OpenCV")


def write_mp4(path: Path, frames: list[np.ndarray], fps: int, encoder: tuple[str, str]) -> None:
    lib, codec = encoder
    h, w = frames[0].shape[:2]
    if lib == "pyav":
        import av

        with av.open(str(path), mode="w") as out:
            stream = out.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    try:
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def generate(out_dir: str | Path, cfg: SynthConfig | None = None) -> Path:
    """Write ``cfg.n_samples`` samples under ``out_dir``; return the path of ``dataset.json``."""
    from PIL import Image

    cfg = cfg or SynthConfig()
    if cfg.video_format not in ("mp4", "frames"):
        raise ValueError(f"video_format must be 'mp4' or 'frames', got {cfg.video_format!r}")
    out = Path(out_dir)
    (out / "event_image").mkdir(parents=True, exist_ok=True)
    encoder = video_encoder() if cfg.video_format == "mp4" else ("pil", "png")
    rng = np.random.default_rng(cfg.seed)
    n_frames = max(1, int(round(cfg.duration_s * cfg.fps)))
    entries = []
    for i in range(cfg.n_samples):
        sid = f"{i:06d}"
        scene = _Scene(rng, cfg.width, cfg.height)
        events = simulate_events(scene, cfg.duration_s, n_frames * cfg.substeps, cfg.threshold)
        since_s = cfg.duration_s - cfg.event_window_s
        Image.fromarray(event_frame(events, cfg.width, cfg.height, cfg.background, since_s)).save(
            out / "event_image" / f"{sid}.png")
        frames = [scene.rgb(k / cfg.fps) for k in range(n_frames)]
        entry = {"id": sid, "event_image": [f"{sid}.png"], "query": QUERIES[i % len(QUERIES)],
                 "n_events": int(len(events["x"]))}
        if cfg.video_format == "mp4":
            (out / "mp4").mkdir(exist_ok=True)
            write_mp4(out / "mp4" / f"{sid}.mp4", frames, cfg.fps, encoder)
            entry["mp4"] = f"{sid}.mp4"
        else:
            folder = out / "video" / sid
            folder.mkdir(parents=True, exist_ok=True)
            for k, f in enumerate(frames):
                Image.fromarray(f).save(folder / f"{k:05d}.png")
            entry["video"] = sid
        entries.append(entry)
    (out / "dataset.json").write_text(json.dumps(entries, indent=1))
    (out / "synthetic.json").write_text(json.dumps(
        {**asdict(cfg), "frames_per_clip": n_frames, "encoder": list(encoder)}, indent=1))
    return out / "dataset.json"
