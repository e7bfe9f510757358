"""DSEC-style dataset layout used by the seed benchmarks (and written by :mod:`measure.synthetic`)::

    DIR/
        dataset.json        [{"id": "000000", "event_image": ["000000.png"], "mp4": "000000.mp4",
                              "query": "What are the key elements in this scene?"}, ...]
        event_image/        event frames (PNG), one or more per sample; the drafter uses the first
        mp4/                RGB clips (H.264/MPEG-4), or
        video/<folder>/     one folder of frame images per sample (key "video")

Paths in the JSON are relative to their folder (``"000000.png"``; ``"event_image/000000.png"``
is accepted too). EventGPT-style ``conversations`` (first human turn) can stand in for ``query``.
Every problem raises :class:`DatasetError` with one line naming the sample id and the file.
MP4s are decoded with PyAV, or OpenCV where PyAV is missing; the decoder used is recorded.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from measure.errors import first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class DatasetError(ValueError):
    """A dataset file is missing or unreadable; one line naming the sample and the file."""


@dataclass(frozen=True)
class Sample:
    sample_id: str
    query: str
    event_images: tuple[Path, ...]
    mp4: Path | None = None
    video_dir: Path | None = None


def _resolve(root: Path, folder: str, name: str) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    return root / p if p.parts and p.parts[0] == folder else root / folder / p


def _query_of(entry: dict[str, Any]) -> str | None:
    if isinstance(entry.get("query"), str):
        return entry["query"]
    for turn in entry.get("conversations", []) or []:
        if isinstance(turn, dict) and turn.get("from") in ("human", "user"):
            return str(turn.get("value", "")).replace("<image>", "").replace("<video>", "").strip()
    return None


def _parse_entry(root: Path, entry: Any, index: int) -> Sample:
    if not isinstance(entry, dict):
        raise DatasetError(f"{root}: sample #{index} is {type(entry).__name__}, expected an object")
    sid = str(entry.get("id", entry.get("sample_id", f"#{index}")))
    events = entry.get("event_image")
    events = [events] if isinstance(events, str) else list(events or [])
    if not events:
        raise DatasetError(f"sample {sid}: no 'event_image' given")
    query = _query_of(entry)
    if query is None:
        raise DatasetError(f"sample {sid}: no 'query' (or human turn in 'conversations')")
    mp4 = _resolve(root, "mp4", entry["mp4"]) if entry.get("mp4") else None
    vdir = _resolve(root, "video", entry["video"]) if entry.get("video") else None
    if mp4 is None and vdir is None:
        raise DatasetError(f"sample {sid}: neither 'mp4' nor 'video' (frame folder) given")
    s = Sample(sid, query, tuple(_resolve(root, "event_image", e) for e in events), mp4, vdir)
    for f in (*s.event_images, s.mp4):
        if f is not None and not f.is_file():
            raise DatasetError(f"sample {sid}: missing file {f}")
    if vdir is not None and not vdir.is_dir():
        raise DatasetError(f"sample {sid}: missing frame folder {vdir}")
    return s


def find_json(path: str | Path) -> Path:
    """``path`` itself if it is a JSON file, else ``dataset.json`` or the only ``*.json`` in it."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f"dataset {path}: no such file or directory")
    if (path / "dataset.json").is_file():
        return path / "dataset.json"
    found = sorted(path.glob("*.json"))
    if len(found) != 1:
        raise DatasetError(f"dataset {path}: expected dataset.json (found {len(found)} *.json files)")
    return found[0]


def load_dataset(path: str | Path, n_samples: int | None = None) -> list[Sample]:
    """Parse and check the dataset JSON; return the first ``n_samples`` samples (all if None)."""
    jf = find_json(path)
    try:
        entries = json.loads(jf.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset {jf}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"dataset {jf}: expected a non-empty list of samples")
    entries = entries[:n_samples] if n_samples else entries
    return [_parse_entry(jf.parent, e, i) for i, e in enumerate(entries)]


def read_image(path: Path, sample_id: str = "?") -> np.ndarray:
    """Image file -> (H, W, 3) uint8 RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise DatasetError(f"sample {sample_id}: cannot read image {path} ({first_line(exc)})") from exc


def uniform_indices(total_frames: int, n_frames: int) -> np.ndarray:
    """``n_frames`` indices spread evenly over ``[0, total_frames)`` (repeats if the clip is shorter)."""
    if total_frames <= 0:
        raise ValueError("clip has no frames")
    return np.linspace(0, total_frames - 1, n_frames).round().astype(int)


def available_decoder(preferred: str = "auto") -> str:
    """``pyav`` if importable, else ``opencv``; ``preferred`` forces one (error if missing)."""
    have = {"pyav": importlib.util.find_spec("av") is not None,
            "opencv": importlib.util.find_spec("cv2") is not None}
    if preferred != "auto":
        if not have.get(preferred):
            raise DatasetError(f"video decoder {preferred!r} is not installed")
        return preferred
    for name in ("pyav", "opencv"):
        if have[name]:
            return name
    raise DatasetError("no MP4 decoder: install PyAV (pip install av) or OpenCV")


def decode_mp4(path: Path, n_frames: int, sample_id: str = "?", decoder: str = "auto") -> tuple[np.ndarray, str]:
    """Decode ``n_frames`` uniformly sampled RGB frames -> ((F, H, W, 3) uint8, decoder name)."""
    name = available_decoder(decoder)
    try:
        frames = _decode_pyav(path, n_frames) if name == "pyav" else _decode_opencv(path, n_frames)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"sample {sample_id}: cannot decode {path} ({first_line(exc)})") from exc
    if len(frames) != n_frames:
        raise DatasetError(f"sample {sample_id}: decoded {len(frames)} of {n_frames} frames from {path}")
    return np.stack(frames), name


def _decode_pyav(path: Path, n_frames: int) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames
        if total <= 0:  # unknown length: keep decoded frames, convert only the chosen ones
            raw = list(container.decode(stream))
            return [raw[i].to_ndarray(format="rgb24") for i in uniform_indices(len(raw), n_frames)]
        idx = uniform_indices(total, n_frames)
        want, out = set(idx.tolist()), {}
        for i, frame in enumerate(container.decode(stream)):
            if i in want:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= idx[-1]:
                break
        if not out:
            raise ValueError("no decodable frames")
        last = max(out)  # container over-reported its length: reuse the last decoded frame
        return [out.get(int(i), out[last]) for i in idx]


def _decode_opencv(path: Path, n_frames: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError("OpenCV cannot open the file")
        raw = []
        ok, frame = cap.read()
        while ok:
            raw.append(frame)
            ok, frame = cap.read()
        if not raw:
            raise ValueError("no decodable frames")
        return [cv2.cvtColor(raw[i], cv2.COLOR_BGR2RGB) for i in uniform_indices(len(raw), n_frames)]
    finally:
        cap.release()


def read_frame_folder(folder: Path, n_frames: int, sample_id: str = "?") -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"sample {sample_id}: frame folder {folder} has no images")
    return np.stack([read_image(files[i], sample_id) for i in uniform_indices(len(files), n_frames)])


def read_video(sample: Sample, n_frames: int, decoder: str = "auto") -> tuple[np.ndarray, str]:
    """Stage-1 video read for the target: MP4 clip if given, else the frame folder."""
    if sample.mp4 is not None:
        return decode_mp4(sample.mp4, n_frames, sample.sample_id, decoder)
    return read_frame_folder(sample.video_dir, n_frames, sample.sample_id), "frames"

