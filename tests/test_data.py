"""Tests for data.py: the sampling rule, augmentation, reading only the frames asked for, the
folder index, bad input, determinism / resuming, and the white-noise square. Videos are tiny and
written on the fly."""

import os
from collections import Counter
from fractions import Fraction

import av
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import data
from conftest import ROOT


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Clips are tiny here: on a busy shared CPU, torch's intra-op threads only add waiting
    (DataLoader workers run with one thread anyway)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Index caches of read-only folders go to a temporary folder, never to ~/.cache (or shared
    data)."""
    path = tmp_path / "rvm_cache"
    monkeypatch.setattr(data, "CACHE_DIR", str(path))
    return path


# ---------------------------------------------------------------------------- helpers: tiny videos


def coded_frames(n, video_id=0, size=(32, 32)):
    """Flat frames: frame i has R = 10 + 3i and G = 20 + 40 * video_id, so any crop of it tells
    which frame of which video it is."""
    frames = np.zeros((n, *size, 3), dtype=np.uint8)
    frames[..., 0] = (10 + 3 * np.arange(n))[:, None, None]
    frames[..., 1] = 20 + 40 * video_id
    frames[..., 2] = 128
    return frames


def block_frames(n, size=64, seed=0):
    """Frames of random 8x8-pixel blocks, all different, that survive lossy coding."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, size // 8, size // 8, 3), dtype=np.uint8)
    return blocks.repeat(8, 1).repeat(8, 2)


def write_pngs(folder, frames):
    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(frames):
        iio.imwrite(os.path.join(folder, f"{i:05d}.png"), frame)


def write_video(path, frames, codec="libx264"):
    iio.imwrite(path, frames, plugin="pyav", codec=codec, fps=25)


def write_video_small_gop(path, frames, gop=8, faststart=False):
    """A video with a keyframe every `gop` frames, so that seeking lands inside it (written with
    PyAV); faststart: its index (frame count) before its frames."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", container_options=options) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_variable_rate(path, frames):
    """A video whose frames are 40 ms apart, but every third 90 ms: a variable frame rate."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i, frame in enumerate(frames):
            image = av.VideoFrame.from_ndarray(frame, format="rgb24")
            image.pts, image.time_base = t, Fraction(1, 1000)
            t += 40 if i % 3 else 90
            container.mux(stream.encode(image))
        container.mux(stream.encode())


def write_corrupt_halfway(path, frames):
    """A video whose header and first half are fine, and whose second half is zeros."""
    write_video_small_gop(path, frames, gop=1)
    blob = bytearray(open(path, "rb").read())
    blob[len(blob) // 2:len(blob) // 2 + len(blob) // 8] = bytes(len(blob) // 8)
    open(path, "wb").write(blob)


def frame_ids(ex):
    """(frame index, video id) of every frame of a coded-frames example, and whether each frame
    is flat."""
    clip = torch.cat([ex["source"], ex["target"]]).float()
    flat = (clip.amax((2, 3)) == clip.amin((2, 3))).all(1)
    idx = ((clip[:, 0].mean((1, 2)) - 10) / 3).round().long()
    vid = ((clip[:, 1].mean((1, 2)) - 20) / 40).round().long()
    return idx, vid, flat


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- the sampling rule


def test_sample_clip_rules():
    rng = np.random.default_rng(0)
    for n in [8, 9, 20, 52, 55, 63, 64, 70, 1000]:
        length, seen, starts, unsorted = min(64, n), set(), [], 0
        for _ in range(300):
            idx, deltas = data.sample_clips(rng, n)[0]
            src, tgt = idx[:4], idx[4:]
            gaps = tgt - src[-1]
            assert (np.diff(src) == 1).all(), "source frames are consecutive"
            assert gaps.min() >= 4 and gaps.max() <= min(48, length - 4), (n, gaps)
            assert (deltas == tgt - src[0]).all() and (deltas == 3 + gaps).all(), "Δ from source 0"
            assert 0 <= idx.min() and idx.max() < n, "inside the video"
            assert tgt.max() - src[0] < length, "inside the window"
            assert deltas.max() < 64, "the decoder's one-hot has 64 slots"
            seen |= set(gaps.tolist())
            starts.append(src[0])
            unsorted += not (np.diff(tgt) >= 0).all()
        assert seen == set(range(4, min(48, length - 4) + 1)), f"gaps uniform over all (n={n})"
        assert max(starts) <= n - length, "start uniform"
        assert n < 200 or max(starts) > 0.8 * (n - length), "start uniform"
        if n >= 64:
            assert unsorted > 100, "targets are drawn independently, not sorted"
    for n in [0, 5, 7]:
        with pytest.raises(ValueError, match="too short"):
            data.sample_clips(rng, n)


def test_examples_hold_the_sampled_frames(tmp_path):
    lengths = [70, 30, 12]
    for v, n in enumerate(lengths):
        write_pngs(tmp_path / f"video{v}", coded_frames(n, v))
    ds = data.ClipDataset(str(tmp_path), image_size=16)
    videos = Counter()
    for k in range(40):
        ex = ds.example(k)
        assert ex["source"].shape == (4, 3, 16, 16) and ex["target"].shape == (4, 3, 16, 16)
        assert ex["source"].dtype == torch.uint8 and ex["deltas"].dtype == torch.int64
        assert ex["index"] == k
        idx, vid, flat = frame_ids(ex)
        assert flat.all() and (vid == vid[0]).all(), "every frame of an example from one video"
        n = lengths[vid[0]]
        videos[int(vid[0])] += 1
        assert torch.equal(idx, ex["frame_idx"]), "the pixels are the frames the example names"
        assert torch.equal(idx[:4], idx[0] + torch.arange(4))
        gaps = idx[4:] - idx[3]
        assert gaps.min() >= 4 and gaps.max() <= min(48, min(64, n) - 4) and idx.max() < n
        assert torch.equal(ex["deltas"], idx[4:] - idx[0])
    assert len(videos) == 3


# ---------------------------------------------------------------------------- augmentation


def test_random_resized_crop_box():
    rng = np.random.default_rng(0)
    # the largest box of ratio <= 1.25 covers 480 * 600 / (480 * 854) = 0.70 of a 480p frame
    for height, width, largest in [(480, 854, 0.70), (64, 64, 1.0), (100, 30, None)]:
        fractions = []
        for _ in range(500):
            top, left, h, w = data.random_resized_crop_box(rng, height, width)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            fractions.append(h * w / (height * width))
            if (h, w) != (height, width):  # not the fallback
                assert 0.3 - 0.02 <= fractions[-1] <= 1.0, (h, w)
                assert 0.75 - 0.05 <= w / h <= 1.25 + 0.05, (h, w)
        if largest:
            assert min(fractions) < 0.32 and largest - 0.05 < max(fractions) <= largest + 0.01
    # too elongated for any try: torchvision's fallback, the centred box at the nearest ratio
    assert data.random_resized_crop_box(rng, 10, 200) == (0, 94, 10, 12)
    assert data.random_resized_crop_box(rng, 200, 10) == (93, 0, 13, 10)
    box = data.random_resized_crop_box(rng, 50, 60, scale=(1, 1), ratio=(1.2, 1.2))
    assert box == (0, 0, 50, 60)


def test_flip_whole_clip_and_one_crop_box(tmp_path):
    # a static video of a ramp: R grows to the right, G grows downwards
    y, x = np.mgrid[0:48, 0:64]
    frame = np.stack([x * 4, y * 5, np.zeros_like(x)], -1).astype(np.uint8)
    write_pngs(tmp_path / "ramp", np.repeat(frame[None], 12, 0))

    def clips(**kw):
        ds = data.ClipDataset(str(tmp_path), image_size=32, **kw)
        return [torch.cat([ex["source"], ex["target"]]) for ex in map(ds.example, range(60))]

    def flipped(f):  # R decreasing left to right
        return bool(f[0, :, -1].float().mean() < f[0, :, 0].float().mean())

    default = clips()
    for clip in default:
        assert (clip == clip[0]).all(), "one flip and one crop box for every frame of a clip"
    n_flipped = sum(flipped(clip[0]) for clip in default)
    assert 15 <= n_flipped <= 45, f"flip p=0.5, got {n_flipped}/60"
    assert len({clip[0].numpy().tobytes() for clip in default}) > 50, "boxes differ between clips"

    per_frame = clips(per_frame_crop=True)
    assert sum(not (clip == clip[0]).all() for clip in per_frame) >= 55, "a box per frame"
    for clip in per_frame:
        assert len({flipped(f) for f in clip}) == 1, "the flip stays whole-clip, boxes per frame"
    assert not any(flipped(clip[0]) for clip in clips(flip_p=0.0))
    assert all(flipped(clip[0]) for clip in clips(flip_p=1.0))


def test_the_uint8_resize_is_the_same_crop_of_the_same_frames():
    """augment resizes uint8 frames in fixed point; the clip is the one the float path (bicubic,
    antialiased, rounded once) made from the same draws, within a grey level or two."""
    y, x = np.mgrid[0:120, 0:200]
    smooth = 128 + 60 * np.sin(x / 9.0)[None] * np.cos(y / 13.0 + np.arange(6)[:, None, None])
    frames = np.stack([smooth, smooth[:, ::-1], 255 - smooth], 1).clip(0, 255).astype(np.uint8)
    clip = torch.from_numpy(frames)  # [T, 3, H, W]
    for seed in range(20):
        for size in (32, 96, 160):  # shrinking and enlarging
            rng = np.random.default_rng(seed)
            flip = rng.random() < 0.5
            top, left, h, w = data.random_resized_crop_box(rng, 120, 200)
            crop = clip[:, :, top:top + h, left:left + w].float()
            expected = torch.nn.functional.interpolate(crop, size=(size, size), mode="bicubic",
                                                       antialias=True).round().clamp(0, 255)
            if flip:
                expected = expected.flip(-1)
            got = data.augment(clip, np.random.default_rng(seed), size)
            assert got.dtype == torch.uint8 and got.shape == (6, 3, size, size)
            diff = (got.float() - expected).abs()
            assert diff.max() <= 2 and diff.mean() < 0.3, (seed, size, diff.max(), diff.mean())


# -------------------------------------------------------------------- decoding only what is needed


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """The same 70 different frames as mp4, small-GOP mp4 (seeks land inside), mkv, webm, avi, mov,
    gif, and keyframes only (every frame decodes on its own)."""
    folder = tmp_path_factory.mktemp("videos")
    frames = block_frames(70)
    paths = {}
    for name, codec in [("a.mp4", "libx264"), ("b.mkv", "libx264"), ("c.webm", "libvpx-vp9"),
                        ("d.avi", "mpeg4"),
                        ("e.mov", "libx264")]:
        paths[name] = str(folder / name)
        write_video(paths[name], frames, codec)
    paths["f.gif"] = str(folder / "f.gif")
    iio.imwrite(paths["f.gif"], frames)
    paths["g_gop8.mp4"] = str(folder / "g_gop8.mp4")
    write_video_small_gop(paths["g_gop8.mp4"], frames)
    paths["h_keyframes.mp4"] = str(folder / "h_keyframes.mp4")  # as data.py prepares videos
    write_video_small_gop(paths["h_keyframes.mp4"], frames, gop=1)
    return frames, paths


WINDOWS = [[0, 1, 2, 3, 7, 30, 51, 12], [18, 19, 20, 21, 25, 69, 40, 25],
           [60, 61, 62, 63, 67, 69, 65, 66],
           [40, 41, 42, 43, 47, 50, 44, 45]]


def test_needed_frames_equal_full_decode(videos):
    frames, paths = videos
    for name, path in paths.items():
        full = iio.imread(path, plugin="pyav")
        assert len(full) == 70 and data.count_frames(path) == 70
        # the full decode is the reference: frame i of it is (closest to) the written frame i
        own = np.abs(full.astype(int) - frames).mean((1, 2, 3))
        before = np.abs(full[1:].astype(int) - frames[:-1]).mean((1, 2, 3))
        after = np.abs(full[:-1].astype(int) - frames[1:]).mean((1, 2, 3))
        assert own.max() < 30 and before.min() > 60 and after.min() > 60, name
        for idx in WINDOWS:
            assert np.array_equal(data.read_frames(path, idx), full[idx]), (name, idx)
            if not name.endswith(".gif"):  # gif frames build on the one before: decoded in order
                # the fast path (timestamps, seeking, dropped frames) is the one that answered
                got = data._decode(path, sorted(set(idx)), by_pts=True)
                assert all(np.array_equal(got[i], full[i]) for i in idx), (name, idx)


def test_truncated_video_reads_what_it_has(videos, tmp_path):
    frames, paths = videos
    blob = open(paths["b.mkv"], "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(blob[: len(blob) // 2])
    full = iio.imread(paths["b.mkv"], plugin="pyav")
    idx = [0, 1, 2, 3, 7, 5, 9, 8]
    assert np.array_equal(data.read_frames(str(cut), idx), full[idx])
    with pytest.raises(ValueError, match="cut.mkv.*frame 69"):
        data.read_frames(str(cut), [0, 1, 2, 3, 7, 5, 9, 69])
    # not a video at all, or nothing in it: one ValueError naming the file
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n")
    for name in ("empty.mp4", "text.mp4"):
        with pytest.raises(ValueError, match=f"{name}: not a readable video"):
            data.read_frames(str(tmp_path / name))


def test_frame_folders_are_read_in_frame_order_and_bad_images_named(tmp_path):
    frames = coded_frames(12)
    os.makedirs(tmp_path / "clip")
    for i, frame in enumerate(frames):  # frame_2 must come before frame_10
        iio.imwrite(tmp_path / "clip" / f"frame_{i}.png", frame)
    assert np.array_equal(data.read_frames(tmp_path / "clip"), frames)
    assert np.array_equal(data.read_frames(tmp_path / "clip", [11, 2, 2]), frames[[11, 2, 2]])
    assert data.count_frames(str(tmp_path / "clip")) == 12
    (tmp_path / "clip" / "frame_5.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="frame_5.png: not a readable image"):
        data.read_frames(tmp_path / "clip")
    got = data.read_frames(tmp_path / "clip", [4, 6])
    assert np.array_equal(got, frames[[4, 6]]), "other files not opened"


# ------------------------------------------------------------------------ the index and its cache


def test_frame_counts_are_indexed_once_and_cached(tmp_path, cache_dir):
    write_video(str(tmp_path / "a.mp4"), coded_frames(20, size=(32, 32)))
    os.makedirs(tmp_path / "sub")
    write_video(str(tmp_path / "sub" / "b.webm"), coded_frames(25, size=(32, 32)), "libvpx-vp9")
    write_pngs(tmp_path / "frames", coded_frames(15))

    def listing(folder):
        videos = data.ClipDataset(str(folder)).corpora[0]["videos"]
        return sorted((os.path.relpath(p, folder), n) for p, n in videos)

    assert listing(tmp_path) == [("a.mp4", 20), ("frames", 15), (os.path.join("sub", "b.webm"), 25)]
    assert (tmp_path / data.INDEX_NAME).exists()
    # A restart trusts the index for every file whose size and mtime are unchanged: b.webm, its
    # garbled in place, still counts 25 frames (it was not opened again) ...
    st = os.stat(tmp_path / "sub" / "b.webm")
    with open(tmp_path / "sub" / "b.webm", "r+b") as f:
        f.write(b"\0" * 64)
    os.utime(tmp_path / "sub" / "b.webm", ns=(st.st_atime_ns, st.st_mtime_ns))
    write_video(str(tmp_path / "c.mp4"), coded_frames(30, size=(32, 32)))
    assert listing(tmp_path)[-1] == (os.path.join("sub", "b.webm"), 25)
    assert ("c.mp4", 30) in listing(tmp_path)  # ... and a new file is counted
    # A read-only folder: the index goes to the cache folder instead, and is read back from there.
    ro = tmp_path / "readonly"
    os.makedirs(ro)
    write_video(str(ro / "a.mp4"), coded_frames(20, size=(32, 32)))
    os.chmod(ro, 0o555)
    try:
        assert listing(ro) == [("a.mp4", 20)]
        assert not (ro / data.INDEX_NAME).exists()
        assert len(list(cache_dir.glob("index-*.json"))) == 1
        index = next(cache_dir.glob("index-*.json"))
        # a planted count shows that it was read
        index.write_text(index.read_text().replace("20, null", "21, null"))
        assert listing(ro) == [("a.mp4", 21)]
    finally:
        os.chmod(ro, 0o755)


def test_davis_frame_folders(davis):
    folder = davis / "davis2017-mini" / "JPEGImages" / "480p"
    before = sorted(os.listdir(folder))
    ds = data.ClipDataset(str(folder), image_size=32)
    assert len(ds.corpora[0]["videos"]) == len(before) and sum(ds.skipped.values()) == 0
    ex = ds.example(0)
    assert ex["source"].shape == (4, 3, 32, 32) and ex["target"].shape == (4, 3, 32, 32)
    assert ex["source"].float().std() > 5, "real pixels, not a blank frame"
    assert sorted(os.listdir(folder)) == before, "nothing written into the (read-only) folder"


def test_jpeg_frames_decode_at_a_reduced_size_no_smaller_than_asked(tmp_path):
    """min_side: JPEGs come out of the decoder's own 1/2, 1/4 or 1/8 scaling, each side still
    >= min_side, close to the whole frame averaged down; PNGs are read whole."""
    frame = np.random.default_rng(3).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    frame = frame.repeat(80, 0).repeat(80, 1)
    os.makedirs(tmp_path / "jpg")
    iio.imwrite(tmp_path / "jpg" / "00000.jpg", frame, quality=95)
    whole = data.read_frames(tmp_path / "jpg", [0])[0]
    assert whole.shape == (480, 640, 3)
    for min_side, shape in [(100, (120, 160)), (240, (240, 320)), (241, (480, 640)),
                            (60, (60, 80))]:
        small = data.read_frames(tmp_path / "jpg", [0], min_side=min_side)[0]
        assert small.shape == (*shape, 3), min_side
        k = 480 // shape[0]
        averaged = whole.reshape(shape[0], k, shape[1], k, 3).mean((1, 3))
        assert np.abs(small - averaged).mean() < 6, min_side
    write_pngs(tmp_path / "png", frame[None])
    assert data.read_frames(tmp_path / "png", [0], min_side=100).shape == (1, 480, 640, 3)


# ---------------------------------------------------------------------------- bad input


def test_to_rgb_conversions():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for a in [gray, gray[:, :, None], np.stack([gray, gray * 0 + 7], -1)]:
        rgb = data.to_rgb(a)
        assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and (rgb == gray[:, :, None]).all()
    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    assert np.array_equal(data.to_rgb(rgba), rgba[:, :, :3])
    sixteen = (gray.astype(np.uint16) << 8) + 255
    assert np.array_equal(data.to_rgb(sixteen), np.repeat(gray[:, :, None], 3, 2))
    with pytest.raises(ValueError):
        data.to_rgb(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError):
        data.to_rgb(np.zeros((3, 4, 5), np.uint8))


def test_bad_files_are_skipped_or_converted_and_counted(tmp_path, capsys):
    write_video(str(tmp_path / "good1.mp4"), coded_frames(20, 0))
    write_video(str(tmp_path / "good2.mkv"), coded_frames(20, 1))
    noise = np.random.default_rng(0).integers(0, 256, 5000, np.uint8)
    (tmp_path / "corrupt.mp4").write_bytes(noise.tobytes())
    (tmp_path / "empty.webm").write_bytes(b"")
    (tmp_path / "notes.avi").write_text("not a video at all\n")
    (tmp_path / "readme.txt").write_text("ignored: not a video extension\n")
    write_video(str(tmp_path / "short.mp4"), coded_frames(5, 2))
    y, x = np.mgrid[0:37, 0:51]
    gray = [((x + y + 5 * i) % 256).astype(np.uint8) for i in range(16)]  # odd size, 2-D
    write_pngs(tmp_path / "gray", gray)
    rgba = np.zeros((16, 32, 32, 4), np.uint8)
    rgba[..., :3] = (200, 50, 100)
    rgba[..., 3] = np.random.default_rng(1).integers(0, 256, (16, 32, 32))
    write_pngs(tmp_path / "rgba", rgba)

    ds = data.ClipDataset(str(tmp_path), image_size=16)
    assert ds.skipped == Counter(unreadable=3, too_short=1)
    err = capsys.readouterr().err
    for name in ["corrupt.mp4", "empty.webm", "notes.avi", "short.mp4"]:
        assert sum(name in line for line in err.splitlines()) == 1, f"one line naming {name}"
    assert "readme.txt" not in err
    assert len(ds.corpora[0]["videos"]) == 4

    kinds = Counter()
    for k in range(60):
        clip = torch.cat([(ex := ds.example(k))["source"], ex["target"]])
        assert clip.shape == (8, 3, 16, 16) and not ex["skipped"].any()
        if (clip[:, 0] == clip[:, 1]).all() and (clip[:, 1] == clip[:, 2]).all():
            kinds["gray"] += 1
        elif (clip[:, 0] == 200).all() and (clip[:, 1] == 50).all() and (clip[:, 2] == 100).all():
            kinds["rgba"] += 1
        else:
            kinds["color"] += 1
    assert kinds["gray"] and kinds["rgba"] and kinds["color"], kinds


def test_startup_errors_name_the_folder(tmp_path):
    bad = tmp_path / "all_bad"
    os.makedirs(bad)
    (bad / "x.mp4").write_bytes(b"\x00" * 100)
    (bad / "y.mov").write_bytes(b"")
    write_video(str(bad / "z.mp4"), coded_frames(6))  # too short
    with pytest.raises(ValueError, match="all_bad"):
        data.ClipDataset(str(bad))
    os.makedirs(tmp_path / "empty_folder")
    with pytest.raises(ValueError, match="empty_folder"):
        data.ClipDataset(str(tmp_path / "empty_folder"))
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        data.ClipDataset(str(tmp_path / "no_such_folder"))
    with pytest.raises(ValueError, match="colour"):
        data.ClipDataset("noise_square:colour=red")
    with pytest.raises(ValueError, match="direction"):
        data.ClipDataset("noise_square:direction=sideways")
    with pytest.raises(ValueError, match="speed"):
        data.ClipDataset("noise_square:speed=fast")
    with pytest.raises(ValueError, match="window"):
        data.ClipDataset("noise_square", gap_max=64)
    with pytest.raises(ValueError, match="fit"):
        data.ClipDataset("noise_square:square=40", image_size=32)
    with pytest.raises(ValueError):
        data.ClipDataset([("noise_square", 0.0)])


def test_video_failing_during_training_is_skipped_deterministically(tmp_path, capsys):
    write_video(str(tmp_path / "a.mp4"), block_frames(70, 32))
    write_pngs(tmp_path / "b", coded_frames(70, 1))
    ds = data.ClipDataset(str(tmp_path), image_size=16)
    write_video(str(tmp_path / "a.mp4"), block_frames(10, 32))  # ends early: the index says 70
    capsys.readouterr()
    examples = [ds.example(k) for k in range(30)]
    assert ds.skipped["ends_early"] > 0 and set(ds.skipped) == {"ends_early"}
    counts = sum(ex["skipped"] for ex in examples)
    assert counts[data.SKIPS.index("ends_early")] == ds.skipped["ends_early"] == counts.sum()
    err = capsys.readouterr().err
    assert sum("a.mp4" in line for line in err.splitlines()) == 1, "one warning line for the file"
    for ex in examples:
        if ex["skipped"].any():
            idx, vid, flat = frame_ids(ex)
            assert flat.all() and (vid == 1).all(), "the retry is clean"
            assert torch.equal(idx, ex["frame_idx"])
    assert all(same(ex, ds.example(k)) for k, ex in enumerate(examples)), "still deterministic"


def test_bad_videos_are_skipped_with_their_reason(tmp_path, capsys):
    """A variable frame rate, a file corrupt halfway, a video ending before its header's count:
    one warning each, passed over by training, counted by reason."""
    frames = block_frames(80, 32)
    write_variable_rate(tmp_path / "vfr.mp4", frames)
    write_corrupt_halfway(str(tmp_path / "corrupt.mp4"), frames)
    write_pngs(tmp_path / "good", coded_frames(80, 1))
    write_video(str(tmp_path / "ends.mp4"), frames)
    ds = data.ClipDataset(str(tmp_path), image_size=16)
    write_video(str(tmp_path / "ends.mp4"), frames[:8])  # the index still says 80
    capsys.readouterr()
    examples = [ds.example(k) for k in range(60)]  # (the corrupt file's first half is fine)
    assert all(ex["target"].shape == (4, 3, 16, 16) for ex in examples)
    for reason in ("variable_rate", "corrupt", "ends_early"):
        assert ds.skipped[reason] > 0, reason
    assert sum(ex["skipped"] for ex in examples).tolist() == [ds.skipped[r] for r in data.SKIPS]
    err = capsys.readouterr().err.splitlines()
    for name, reason in [("vfr.mp4", "variable"), ("corrupt.mp4", "corrupt"), ("ends.mp4", "ends")]:
        lines = [line for line in err if name in line]
        assert len(lines) == 1 and reason in lines[0], (name, lines)


# ------------------------------------------------------------ determinism, resuming, the loader


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noisy")
    for v in range(3):
        write_pngs(folder / f"v{v}", block_frames(40, 32, seed=v))
    return str(folder)


def test_same_seed_same_stream_other_stream_id_other_stream(noise_folder):
    def stream(**kw):
        ds = data.ClipDataset(noise_folder, image_size=16, **kw)
        return [ds.example(k) for k in range(6)]

    base = stream()
    assert all(same(a, b) for a, b in zip(base, stream(), strict=True))
    for other in [stream(stream=1), stream(seed=1)]:
        assert all(not torch.equal(a["source"], b["source"])
                   for a, b in zip(base, other, strict=True))
    assert len({ex["source"].float().sum().item() for ex in base}) == 6
    resumed = iter(data.ClipDataset(noise_folder, image_size=16, start=3))
    assert all(same(next(resumed), ex) for ex in base[3:]), "start=k resumes the stream exactly"


def test_loader_batches_identical_for_any_worker_count_and_resume(noise_folder):
    def batches(n_workers, start=0, n=3):
        ds = data.ClipDataset(noise_folder, image_size=16, start=start)
        loader = data.make_loader(ds, batch_size=3, num_workers=n_workers)
        assert loader.pin_memory == torch.cuda.is_available()
        it = iter(loader)
        return [next(it) for _ in range(n)]

    base = batches(0)
    assert base[0]["source"].shape == (3, 4, 3, 16, 16) and base[0]["source"].dtype == torch.uint8
    assert base[0]["deltas"].shape == (3, 4) and base[0]["deltas"].dtype == torch.int64
    assert torch.equal(torch.cat([b["index"] for b in base]), torch.arange(9)), "index order"
    ds = data.ClipDataset(noise_folder, image_size=16)
    assert same(base[1], {k: torch.stack([ds.example(i)[k] for i in range(3, 6)]) for k in base[1]})
    for n_workers in (1, 2):
        again = batches(n_workers)
        assert all(same(a, b) for a, b in zip(base, again, strict=True)), f"{n_workers} workers"
    resumed = batches(2, start=4, n=1)[0]
    assert torch.equal(resumed["index"], torch.tensor([4, 5, 6]))
    assert same(resumed, {k: torch.stack([ds.example(i)[k] for i in range(4, 7)]) for k in resumed})


def test_repeated_sampling(tmp_path, monkeypatch):
    """R examples in a row share one window of one video, decoded once; each has its own start,
    gaps, flip and crop; example k stays a function of (seed, stream, k) alone, so any worker
    count and any resume point give the same batches."""
    for v in range(3):
        # frame i has R = 10 + 3i: 80 frames fit uint8
        write_pngs(tmp_path / "videos" / f"v{v}", coded_frames(70 + 5 * v, v))
    ds = data.ClipDataset(str(tmp_path / "videos"), image_size=16, repeated_sampling=4)
    reads = []
    read = data.read_frames
    monkeypatch.setattr(data, "read_frames", lambda *a, **k: reads.append(a[0]) or read(*a, **k))
    examples = [ds.example(k) for k in range(40)]
    assert len(reads) == 10, "one decode per group of 4"
    starts, gaps = set(), set()
    for g in range(10):
        group = examples[4 * g:4 * g + 4]
        ids = [frame_ids(ex) for ex in group]
        assert all(flat.all() and (vid == ids[0][1][0]).all() for _, vid, flat in ids), "one video"
        idx = torch.stack([i for i, _, _ in ids])
        assert idx.max() - idx.min() < 64, "one 64-frame window"
        for ex, i in zip(group, idx, strict=True):
            assert torch.equal(i, ex["frame_idx"]) and torch.equal(i[:4], i[0] + torch.arange(4))
            assert 4 <= (i[4:] - i[3]).min() and (i[4:] - i[3]).max() <= 48
            assert torch.equal(ex["deltas"], i[4:] - i[0])
        starts.add(len(set(idx[:, 0].tolist())))
        gaps.add(len({tuple(i[4:].tolist()) for i in idx}))
    assert max(starts) > 1 and max(gaps) == 4, "each its own start and gaps"
    y, x = np.mgrid[0:48, 0:64]  # a ramp: another crop or flip, other pixels
    ramp = np.stack([x * 4, y * 5, np.zeros_like(x)], -1).astype(np.uint8)
    write_pngs(tmp_path / "ramp" / "r", np.repeat(ramp[None], 70, 0))
    ramps = data.ClipDataset(str(tmp_path / "ramp"), image_size=16, repeated_sampling=4)
    crops = {ramps.example(k)["source"][0].numpy().tobytes() for k in range(4)}
    assert len(crops) == 4, "each its own crop"
    shuffled = data.ClipDataset(str(tmp_path / "videos"), image_size=16, repeated_sampling=4)
    for k in [13, 2, 39, 0, 14, 12]:
        assert same(shuffled.example(k), examples[k]), k

    def batches(n_workers, start, n):
        dataset = data.ClipDataset(str(tmp_path / "videos"), image_size=16, repeated_sampling=4,
                                   start=start)
        it = iter(data.make_loader(dataset, batch_size=3, num_workers=n_workers))
        return [next(it) for _ in range(n)]

    for n_workers, start in [(0, 0), (2, 0), (2, 5)]:
        for b, batch in enumerate(batches(n_workers, start, 3)):
            first = start + 3 * b
            expected = {k: torch.stack([examples[i][k] for i in range(first, first + 3)])
                        for k in batch}
            assert same(batch, expected), (n_workers, start, b)


def test_mixture_follows_the_weights(tmp_path):
    write_pngs(tmp_path / "a" / "v", coded_frames(20, 0, size=(8, 8)))
    write_pngs(tmp_path / "b" / "v", coded_frames(20, 1, size=(8, 8)))
    ds = data.ClipDataset([(str(tmp_path / "a"), 0.8), (str(tmp_path / "b"), 0.2)], image_size=8)
    from_a = sum(int(frame_ids(ds.example(k))[1][0]) == 0 for k in range(300))
    assert 0.72 <= from_a / 300 <= 0.88, from_a
    mixed = data.ClipDataset([(str(tmp_path / "a"), 1), ("noise_square", 1)], image_size=8)
    assert "source_mask" not in mixed.example(0), "masks only when every corpus has them"
    batch = next(iter(data.make_loader(mixed, 4)))
    assert batch["target"].shape == (4, 4, 3, 8, 8)


# ------------------------------------------------------------------------ the white-noise square


def ks(a, b):
    """Kolmogorov-Smirnov distance between two samples of uint8 values."""
    ca = np.cumsum(np.bincount(a.ravel(), minlength=256)) / a.size
    cb = np.cumsum(np.bincount(b.ravel(), minlength=256)) / b.size
    return np.abs(ca - cb).max()


def test_noise_square_defaults_are_the_authors_stimulus():
    video, masks = data.noise_square_video()
    assert video.shape == (64, 3, 512, 512) and video.dtype == torch.uint8
    assert masks.shape == (64, 512, 512) and masks.dtype == torch.bool
    video, masks = video.numpy(), masks.numpy()
    for t in range(64):
        x = t * (512 - 256) // 64
        expected = np.zeros((512, 512), bool)
        expected[128:384, x : x + 256] = True
        assert np.array_equal(masks[t], expected), t
        # the square's texture moves rigidly with it
        assert np.array_equal(video[t][:, 128:384, x : x + 256], video[0][:, 128:384, 0:256]), t
    outside = ~(masks[0] | masks[40])
    assert np.array_equal(video[0][:, outside], video[40][:, outside]), "a static background"
    assert not np.array_equal(video[0], video[1]), "but the square moves"
    assert np.array_equal(data.noise_square_video(seed=0)[0].numpy(), video)
    assert not np.array_equal(data.noise_square_video(seed=1)[0].numpy(), video)


def test_noise_square_is_invisible_in_a_single_frame():
    video, masks = data.noise_square_video()
    video, masks = video.numpy(), masks.numpy()
    for t in [0, 17, 63]:
        inside, outside = video[t][:, masks[t]], video[t][:, ~masks[t]]
        assert abs(inside.mean() - outside.mean()) < 1.0 and abs(inside.std() - outside.std()) < 1.0
        assert abs(outside.mean() - 127.5) < 1.0, "uniform noise"
        assert abs(outside.std() - 73.9) < 1.0, "uniform noise"
        assert ks(inside, outside) < 0.01, "same histogram inside and outside the square"
        assert ks(inside // 2 + 64, outside) > 0.1, "(the check can tell a visible square)"


def test_noise_square_options():
    video, masks = data.noise_square_video(size=512, direction="left")
    x = 256 - 10 * 256 // 64
    assert masks[10, 256, x + 255] and not masks[10, 256, x + 256]
    assert masks[0, 128:384, 256:512].all() and masks[63, 128:384, 4:260].all()

    video, masks = data.noise_square_video(n_frames=30, size=64, square_size=16, speed=3,
                                           direction="down", seed=2)
    for t in range(30):
        y = 3 * t
        expected = np.zeros((64, 64), bool)
        expected[y : y + 16, 24:40] = True  # clipped once it runs off the bottom
        assert np.array_equal(masks[t].numpy(), expected), t
    assert masks[21].sum() == 16 and masks[22].sum() == 0

    video, masks = data.noise_square_video(n_frames=8, size=(48, 80), direction="up")
    assert video.shape == (8, 3, 48, 80)
    for t in range(8):
        y = (48 - 24) - t * (48 - 24) // 8
        assert masks[t].sum() == 24 * 40 and masks[t, y : y + 24, 20:60].all(), t


def test_noise_square_training_source():
    ds = data.ClipDataset("noise_square", image_size=32)
    for k in range(10):
        ex = ds.example(k)
        clip = torch.cat([ex["source"], ex["target"]])
        mask = torch.cat([ex["source_mask"], ex["target_mask"]])
        assert clip.shape == (8, 3, 32, 32) and mask.shape == (8, 32, 32)
        outside = ~mask.any(0)
        assert (clip[:, :, outside] == clip[0, :, outside]).all(), "static background"
        for f, t in enumerate(ex["frame_idx"].tolist()):
            x = t * 16 // 64  # the authors' formula at 32 px
            assert mask[f, 8:24, x : x + 16].all() and mask[f].sum() == 256, (k, t)
    assert not torch.equal(ds.example(0)["source"], ds.example(1)["source"]), "a fresh video"

    ds = data.ClipDataset("noise_square:square=6-10,speed=0.2-0.8,direction=left|up", image_size=64)
    sides, directions = set(), Counter()
    for k in range(40):
        ex = ds.example(k)
        mask = torch.cat([ex["source_mask"], ex["target_mask"]])
        t = ex["frame_idx"]
        rows, cols = mask[0].any(1).nonzero()[:, 0], mask[0].any(0).nonzero()[:, 0]
        side = len(rows)
        assert len(cols) == side and 6 <= side <= 10
        assert (mask.sum((1, 2)) == side * side).all(), "inside the frame"
        sides.add(side)
        j = int(t.argmax())
        r, c = mask[j].any(1).nonzero()[0, 0], mask[j].any(0).nonzero()[0, 0]
        dy, dx = int(r - rows[0]), int(c - cols[0])
        assert dy <= 0 and dx <= 0 and (dy == 0) != (dx == 0), "moves left or up only"
        directions["up" if dy else "left"] += 1
        speed = -(dx + dy) / int(t[j])
        assert 0.2 - 1 / int(t[j]) <= speed <= 0.8 + 1 / int(t[j]), speed
    assert len(sides) >= 4 and directions["up"] and directions["left"]


# ---------------------------------------------------------------------------- prepared data


def test_prepare_writes_keyframes_only_keeps_the_layout_and_resumes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    frames = block_frames(40, 96)[:, :64]  # 64 x 96
    os.makedirs(src / "a")
    write_video(str(src / "a" / "clip.mkv"), frames)
    write_pngs(src / "b" / "seq", frames[:30])
    os.makedirs(src / "c")
    write_variable_rate(src / "c" / "vfr.mp4", frames)
    write_corrupt_halfway(str(src / "c" / "corrupt.mp4"), frames)
    write_video_small_gop(src / "c" / "ends.mp4", frames, faststart=True)
    with av.open(str(src / "c" / "ends.mp4")) as container:
        cut = [p.pos for p in container.demux(video=0) if p.size][25]
    with open(src / "c" / "ends.mp4", "r+b") as f:  # cut after 25 frames; its index says 40
        f.truncate(cut)
    (src / "c" / "text.mp4").write_text("not a video\n")

    done, skipped = data.prepare(src, dst, short_side=32, workers=2)
    assert done == 2 and sorted(os.listdir(dst)) == ["a", "b", "c"] and not os.listdir(dst / "c")
    reasons = {os.path.basename(path): why for path, why in skipped}
    assert sorted(reasons) == ["corrupt.mp4", "ends.mp4", "text.mp4", "vfr.mp4"]
    assert "variable frame rate" in reasons["vfr.mp4"] and "ends" in reasons["ends.mp4"]
    for out, original in [(dst / "a" / "clip.mp4", frames), (dst / "b" / "seq.mp4", frames[:30])]:
        got = data.read_frames(out)
        assert got.shape == (len(original), 32, 48, 3)
        expected = original.reshape(-1, 32, 2, 48, 2, 3).mean((2, 4))  # blocks survive halving
        own = np.abs(got - expected).mean((1, 2, 3))
        other = np.abs(got[1:] - expected[:-1]).mean((1, 2, 3))
        assert own.max() < 25 and other.min() > 50, (out, own.max(), other.min())
        with av.open(str(out)) as container:
            packets = [p for p in container.demux(video=0) if p.size]
            assert len(packets) == len(original) and all(p.is_keyframe for p in packets)
        assert np.array_equal(data.read_frames(out, [29, 3, 17]), got[[29, 3, 17]])
    ds = data.ClipDataset(str(dst), image_size=16)  # train.py's data= takes it as it is
    assert len(ds.corpora[0]["videos"]) == 2 and ds.example(0)["source"].shape == (4, 3, 16, 16)

    stamps = {p: os.stat(p).st_mtime_ns for p in dst.rglob("*.mp4")}
    assert data.prepare(src, dst, short_side=32)[0] == 2
    assert {p: os.stat(p).st_mtime_ns for p in dst.rglob("*.mp4")} == stamps, "nothing rewritten"
    os.remove(dst / "a" / "clip.mp4")  # a run stopped while writing it: only the hidden copy left
    (dst / "a" / ".clip.mp4.partial").write_bytes(b"half")
    assert data.prepare(src, dst, short_side=32)[0] == 2
    assert sorted(os.listdir(dst / "a")) == ["clip.mp4"]
    assert len(data.read_frames(dst / "a" / "clip.mp4")) == 40

    for bad in (src, src / "a"):
        with pytest.raises(ValueError, match="inside"):
            data.prepare(src, bad)


@pytest.mark.slow
def test_prepare_command_line(tmp_path):
    import subprocess
    import sys
    os.makedirs(tmp_path / "src")
    write_video(str(tmp_path / "src" / "a.mp4"), block_frames(20, 32))
    (tmp_path / "src" / "b.mp4").write_text("not a video\n")
    command = [sys.executable, "data.py", f"--src={tmp_path / 'src'}", f"--dst={tmp_path / 'dst'}"]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "b.mp4" in out.stdout and (tmp_path / "dst" / "a.mp4").exists()
    command[-1] = f"--dst={tmp_path / 'src' / 'inside'}"
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "inside" in out.stderr
    os.remove(tmp_path / "src" / "a.mp4")
    command[-1] = f"--dst={tmp_path / 'dst2'}"
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1, "nothing could be prepared"
