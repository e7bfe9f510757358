"""measure.dataset / measure.synthetic: layout, decoding, one-line errors naming the sample."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

pytest.importorskip("torch")  # the measure extra; the simulator-only CI skips this file
if not (importlib.util.find_spec("av") or importlib.util.find_spec("cv2")):
    pytest.skip("needs PyAV or OpenCV to write/read MP4s", allow_module_level=True)

from measure import dataset as ds  # noqa: E402
from measure.synthetic import SynthConfig, event_frame, generate, simulate_events  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(n_samples=3, width=128, height=96, duration_s=0.5, fps=20, seed=3))
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(src, dst)
    return dst


def test_synthetic_writes_the_exact_layout(synth_dir):
    entries = json.loads((synth_dir / "dataset.json").read_text())
    assert [e["id"] for e in entries] == ["000000", "000001", "000002"]
    for e in entries:
        assert (synth_dir / "event_image" / e["event_image"][0]).is_file()
        assert (synth_dir / "mp4" / e["mp4"]).is_file()
        assert e["query"] and e["n_events"] > 0
    meta = json.loads((synth_dir / "synthetic.json").read_text())
    assert meta["frames_per_clip"] == 10 and meta["encoder"][0] in ("pyav", "opencv")
    assert sorted(p.name for p in synth_dir.iterdir()) == ["dataset.json", "event_image", "mp4", "synthetic.json"]


def test_event_frame_is_red_blue_on_white(synth_dir):
    img = ds.read_image(synth_dir / "event_image" / "000000.png")
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert img.shape == (96, 128, 3)
    assert colours <= {(255, 255, 255), (255, 0, 0), (0, 0, 255)} and len(colours) == 3


def test_event_simulation_fires_on_log_intensity_change():
    class Step:  # one pixel doubles its intensity at t > 0: log2 / 0.2 = 3 positive events
        def intensity(self, t):
            import numpy as np

            return np.full((1, 2), 0.2 if t == 0 else 0.4)

    ev = simulate_events(Step(), duration_s=1.0, steps=1, threshold=0.2)
    assert len(ev["x"]) == 2 * 3 and set(ev["p"]) == {1}
    assert event_frame(ev, 2, 1)[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("n_frames", [1, 8, 16])
def test_mp4_decodes_to_the_requested_frame_count(synth_dir, n_frames):
    sample = ds.load_dataset(synth_dir)[0]
    frames, decoder = ds.read_video(sample, n_frames)
    assert frames.shape == (n_frames, 96, 128, 3) and frames.dtype.name == "uint8"
    assert decoder == ds.available_decoder()


def test_frame_folder_layout(tmp_path):
    generate(tmp_path, SynthConfig(n_samples=1, width=64, height=48, duration_s=0.25, fps=20, video_format="frames"))
    sample = ds.load_dataset(tmp_path)[0]
    assert sample.mp4 is None and sample.video_dir == tmp_path / "video" / "000000"
    frames, decoder = ds.read_video(sample, 8)
    assert frames.shape == (8, 48, 64, 3) and decoder == "frames"


def test_uniform_indices_cover_the_clip():
    assert ds.uniform_indices(30, 8).tolist() == [0, 4, 8, 12, 17, 21, 25, 29]
    assert ds.uniform_indices(3, 5).tolist() == [0, 0, 1, 2, 2]


def test_missing_file_names_sample_and_file(synth_dir, tmp_path):
    d = _copy(synth_dir, tmp_path)
    (d / "mp4" / "000001.mp4").unlink()
    with pytest.raises(ds.DatasetError) as e:
        ds.load_dataset(d)
    msg = str(e.value)
    assert "sample 000001" in msg and "000001.mp4" in msg and "\n" not in msg


def test_bad_json_is_one_line(tmp_path):
    (tmp_path / "dataset.json").write_text('[{"id": "a",')
    with pytest.raises(ds.DatasetError, match=r"dataset\.json: invalid JSON") as e:
        ds.load_dataset(tmp_path)
    assert "\n" not in str(e.value)


def test_corrupt_mp4_names_sample(synth_dir, tmp_path):
    d = _copy(synth_dir, tmp_path)
    (d / "mp4" / "000002.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    sample = ds.load_dataset(d)[2]
    with pytest.raises(ds.DatasetError) as e:
        ds.read_video(sample, 8)
    msg = str(e.value)
    assert msg.startswith("sample 000002: cannot decode") and "000002.mp4" in msg and "\n" not in msg


def test_entry_problems_are_reported(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps([{"id": "x", "event_image": "e.png", "query": "q"}]))
    with pytest.raises(ds.DatasetError, match="sample x: neither 'mp4' nor 'video'"):
        ds.load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps([{"id": "y", "mp4": "a.mp4", "query": "q"}]))
    with pytest.raises(ds.DatasetError, match="sample y: no 'event_image'"):
        ds.load_dataset(tmp_path)


def test_eventgpt_conversations_stand_in_for_query(synth_dir, tmp_path):
    d = _copy(synth_dir, tmp_path)
    entries = json.loads((d / "dataset.json").read_text())
    for e in entries:
        e.pop("query")
        e["event_image"] = "event_image/" + e["event_image"][0]  # folder prefix is accepted too
        e["conversations"] = [{"from": "human", "value": "<image>\nWhat is ahead?"}, {"from": "gpt", "value": "."}]
    (d / "dataset.json").write_text(json.dumps(entries))
    samples = ds.load_dataset(d, n_samples=2)
    assert len(samples) == 2 and samples[0].query == "What is ahead?"
    assert samples[0].event_images[0] == d / "event_image" / "000000.png"
