"""Files: PNG parameters, exact durations, loop closure and re-timing arithmetic."""
import numpy as np
import pytest
from PIL import Image

from animenb import media


def _frames(n, size=32):
    """Frame i: value i * 10 in the top-left pixel, over a gradient (flat frames would quantize alike)."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    frames = []
    for i in range(n):
        pixels = np.stack([np.add.outer(ramp, ramp * 0.5) % 256, np.tile(ramp, (size, 1)),
                           np.full((size, size), (i * 37) % 256)], axis=-1).astype(np.uint8)
        pixels[0, 0] = i * 10
        frames.append(Image.fromarray(pixels))
    return frames


def _flat(n, size=32):
    return [Image.fromarray(np.full((size, size, 3), i * 10, np.uint8)) for i in range(n)]


@pytest.mark.parametrize("count,fps,tick", [(16, 8, 10), (16, 8, 1), (24, 12, 10), (120, 24, 1)])
def test_frame_durations_sum_exactly(count, fps, tick):
    durations = media.frame_durations_ms(count, fps, tick)
    assert len(durations) == count and sum(durations) == round(1000 * count / fps)
    assert all(d % tick == 0 for d in durations)
    assert max(durations) - min(durations) <= tick


def test_gif_webp_mp4_durations_read_back(tmp_path):
    frames = _frames(16)
    assert media.animation_frames_and_seconds(media.save_gif(frames, tmp_path / "a.gif", 8)) == (16, 2.0)
    assert media.animation_frames_and_seconds(media.save_webp(frames, tmp_path / "a.webp", 8)) == (16, 2.0)
    assert media.video_frames_and_seconds(media.save_mp4(frames, tmp_path / "a.mp4", 8)) == (16, 2.0)
    streamed = media.save_mp4(media.retime(frames, seconds=3.0, fps=8), tmp_path / "streamed.mp4", 8)
    assert media.video_frames_and_seconds(streamed) == (24, 3.0)


def test_mp4_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even width and height"):
        media.save_mp4(_frames(2, size=33), tmp_path / "odd.mp4", 8)
    assert not list(tmp_path.iterdir())  # no half-written file left behind


def test_png_carries_parameters(tmp_path):
    params = {"prompt": 'a "quoted"\nprompt', "negative_prompt": "blurry", "steps": 15, "seed": 3}
    path = media.save_png(_frames(1)[0], tmp_path / "p.png", params)
    assert media.read_png_parameters(path) == params
    with Image.open(path) as im:
        assert im.text["parameters"].startswith('a "quoted"\nprompt\nNegative prompt: blurry\n')
        assert "Steps: 15, Seed: 3" in im.text["parameters"]


def test_close_loop_makes_wraparound_an_ordinary_step():
    # A linear ramp generated past the loop length: 0, 10, ..., 190 (16 + 4 frames).
    raw = _flat(20)
    loop = media.close_loop(raw, 16)
    values = [int(np.asarray(f)[0, 0, 0]) for f in loop]
    assert len(loop) == 16
    assert values[4:] == [i * 10 for i in range(4, 16)]  # untouched after the overlap
    assert values[0] == round(0.2 * 0 + 0.8 * 160)  # mostly the natural continuation of frame 15
    with pytest.raises(ValueError, match="at least 16"):
        media.close_loop(raw[:10], 16)


def test_retime_hits_exact_count_and_endpoints():
    stream = media.retime(_flat(25), seconds=5.0, fps=24)
    assert not isinstance(stream, list)  # made as taken: 30 s x 60 fps of large frames never sit in memory
    out = list(stream)
    assert len(out) == 120
    assert np.asarray(out[0])[0, 0, 0] == 0 and np.asarray(out[-1])[0, 0, 0] == 240
    means = [np.asarray(f).mean() for f in out]
    assert all(b >= a for a, b in zip(means, means[1:]))  # monotone blend, no jumps back


def test_sheet_layout():
    sheet = media.compose_sheet(_frames(8, 64), [str(i) for i in range(8)], "title", footer="tiny")
    assert sheet.width == 4 * 64 and sheet.height > 2 * 64


@pytest.mark.parametrize("size", [64, 512])
def test_sheet_captions_fit_their_band(size):
    """Descenders stay inside the caption band: the next row's images must not cut them off."""
    white = [Image.new("RGB", (size, size), "white") for _ in range(8)]
    sheet = np.asarray(media.compose_sheet(white, ["gjpqy gjpqy"] * 8, title="t", footer="gjpqy"))
    label_h, title_h = max(14, size // 8), max(20, size // 5)
    band_bottom = title_h + size + label_h  # first row: image, then its caption band
    assert sheet[band_bottom - 2 * label_h // 3: band_bottom - label_h // 3].min() < 128  # the captions are there
    assert sheet[band_bottom - 1].min() == 255  # nothing reaches the band's last pixel row


def test_concurrent_encoding_writes_the_same_bytes(tmp_path):
    frames = _frames(8, 96)
    for i, frame in enumerate(frames):
        media.save_png(frame, tmp_path / "seq" / f"{i}.png", {"frame": i})
    media.save_webp(frames, tmp_path / "seq" / "a.webp", 8)
    paths = media.save_pngs([(frame, tmp_path / "par" / f"{i}.png", {"frame": i}) for i, frame in enumerate(frames)])
    webp, mp4 = media.encode_concurrently(lambda: media.save_webp(frames, tmp_path / "par" / "a.webp", 8),
                                          lambda: media.save_mp4(frames, tmp_path / "par" / "a.mp4", 8))
    assert paths == [tmp_path / "par" / f"{i}.png" for i in range(8)] and webp.name == "a.webp"
    for name in [f"{i}.png" for i in range(8)] + ["a.webp"]:
        assert (tmp_path / "par" / name).read_bytes() == (tmp_path / "seq" / name).read_bytes(), name
    assert media.video_frames_and_seconds(mp4) == (8, 1.0)
    with pytest.raises(ValueError, match="appears twice"):
        media.save_pngs([(frames[0], tmp_path / "x.png", {}), (frames[0], tmp_path / "y.png", {})])
