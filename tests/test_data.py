"""Tests for data.py: the sampling rule, augmentation, reading only the frames asked for, the
folder index, bad input, determinism / resuming, and the white-noise square. Videos are tiny and
written on the fly."""

import os
from collections import Counter

import av
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import data


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Clips are tiny here: on a busy shared CPU, torch's intra-op threads only add waiting (DataLoader
    workers run with one thread anyway)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Index caches of read-only folders go to a temporary folder, never to ~/.cache (or shared data)."""
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
    return rng.integers(0, 256, (n, size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 1).repeat(8, 2)


def write_pngs(folder, frames):
    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(frames):
        iio.imwrite(os.path.join(folder, f"{i:05d}.png"), frame)


def write_video(path, frames, codec="libx264"):
    iio.imwrite(path, frames, plugin="pyav", codec=codec, fps=25)


def write_video_small_gop(path, frames, gop=8):
    """A video with a keyframe every `gop` frames, so that seeking lands inside it (written with PyAV)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = gop
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def frame_ids(ex):
    """(frame index, video id) of every frame of a coded-frames example, and whether each frame is flat."""
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
            idx, deltas = data.sample_clip(rng, n)
            src, tgt = idx[:4], idx[4:]
            gaps = tgt - src[-1]
            assert (np.diff(src) == 1).all(), "source frames are consecutive"
            assert gaps.min() >= 4 and gaps.max() <= min(48, length - 4), (n, gaps)
            assert (deltas == tgt - src[0]).all() and (deltas == 3 + gaps).all(), "Δ counts from the first source"
            assert 0 <= idx.min() and idx.max() < n and tgt.max() - src[0] < length, "inside video and window"
            assert deltas.max() < 64, "the decoder's one-hot has 64 slots"
            seen |= set(gaps.tolist())
            starts.append(src[0])
            unsorted += not (np.diff(tgt) >= 0).all()
        assert seen == set(range(4, min(48, length - 4) + 1)), f"gaps uniform over the whole range (n={n})"
        assert max(starts) <= n - length and (n < 200 or max(starts) > 0.8 * (n - length)), "start uniform"
        if n >= 64:
            assert unsorted > 100, "targets are drawn independently, not sorted"
    for n in [0, 5, 7]:
        with pytest.raises(ValueError, match="too short"):
            data.sample_clip(rng, n)


def test_examples_hold_the_sampled_frames(tmp_path):
    lengths = [70, 30, 12]
    for v, n in enumerate(lengths):
        write_pngs(tmp_path / f"video{v}", coded_frames(n, v))
    ds = data.ClipDataset(str(tmp_path), image_size=16)
    videos = Counter()
    for k in range(40):
        ex = ds.example(k)
        assert ex["source"].shape == (4, 3, 16, 16) and ex["target"].shape == (4, 3, 16, 16)
        assert ex["source"].dtype == torch.uint8 and ex["deltas"].dtype == torch.int64 and ex["index"] == k
        idx, vid, flat = frame_ids(ex)
        assert flat.all() and (vid == vid[0]).all(), "every frame of an example comes from one video"
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
                assert 0.3 - 0.02 <= fractions[-1] <= 1.0 and 0.75 - 0.05 <= w / h <= 1.25 + 0.05, (h, w)
        if largest:
            assert min(fractions) < 0.32 and largest - 0.05 < max(fractions) <= largest + 0.01
    # too elongated for any try: torchvision's fallback, the centred box at the nearest allowed ratio
    assert data.random_resized_crop_box(rng, 10, 200) == (0, 94, 10, 12)
    assert data.random_resized_crop_box(rng, 200, 10) == (93, 0, 13, 10)
    assert data.random_resized_crop_box(rng, 50, 60, scale=(1, 1), ratio=(1.2, 1.2)) == (0, 0, 50, 60)


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
        assert len({flipped(f) for f in clip}) == 1, "the flip stays whole-clip with per-frame crops"
    assert not any(flipped(clip[0]) for clip in clips(flip_p=0.0))
    assert all(flipped(clip[0]) for clip in clips(flip_p=1.0))


# ---------------------------------------------------------------------------- decoding only what is needed


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """The same 70 different frames as mp4, small-GOP mp4 (seeks land inside), mkv, webm, avi, mov, gif."""
    folder = tmp_path_factory.mktemp("videos")
    frames = block_frames(70)
    paths = {}
    for name, codec in [("a.mp4", "libx264"), ("b.mkv", "libx264"), ("c.webm", "libvpx-vp9"), ("d.avi", "mpeg4"),
                        ("e.mov", "libx264")]:
        paths[name] = str(folder / name)
        write_video(paths[name], frames, codec)
    paths["f.gif"] = str(folder / "f.gif")
    iio.imwrite(paths["f.gif"], frames)
    paths["g_gop8.mp4"] = str(folder / "g_gop8.mp4")
    write_video_small_gop(paths["g_gop8.mp4"], frames)
    return frames, paths


WINDOWS = [[0, 1, 2, 3, 7, 30, 51, 12], [18, 19, 20, 21, 25, 69, 40, 25], [60, 61, 62, 63, 67, 69, 65, 66],
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
            if not name.endswith(".gif"):  # gif frames build on the previous one: always decoded in order
                # the fast path (timestamps, seeking, dropped frames) is the one that answered
                got = data._decode(path, sorted(set(idx)), by_pts=True)
                assert all(np.array_equal(got[i], full[i]) for i in idx), (name, idx)


def test_truncated_video_reads_what_it_has(videos, tmp_path):
    frames, paths = videos
    blob = open(paths["b.mkv"], "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(blob[: len(blob) // 2])
    full = iio.imread(paths["b.mkv"], plugin="pyav")
    assert np.array_equal(data.read_frames(str(cut), [0, 1, 2, 3, 7, 5, 9, 8]), full[[0, 1, 2, 3, 7, 5, 9, 8]])
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
    assert np.array_equal(data.read_frames(tmp_path / "clip", [4, 6]), frames[[4, 6]]), "other files not opened"


# ---------------------------------------------------------------------------- the index and its cache


def test_frame_counts_are_indexed_once_and_cached(tmp_path, cache_dir):
    write_video(str(tmp_path / "a.mp4"), coded_frames(20, size=(32, 32)))
    os.makedirs(tmp_path / "sub")
    write_video(str(tmp_path / "sub" / "b.webm"), coded_frames(25, size=(32, 32)), "libvpx-vp9")
    write_pngs(tmp_path / "frames", coded_frames(15))

    def listing(folder):
        return sorted((os.path.relpath(p, folder), n) for p, n in data.ClipDataset(str(folder)).sources[0]["videos"])

    assert listing(tmp_path) == [("a.mp4", 20), ("frames", 15), (os.path.join("sub", "b.webm"), 25)]
    assert (tmp_path / data.INDEX_NAME).exists()
    # A restart trusts the index for every file whose size and mtime are unchanged: b.webm, its bytes
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
        assert not (ro / data.INDEX_NAME).exists() and len(list(cache_dir.glob("index-*.json"))) == 1
        index = next(cache_dir.glob("index-*.json"))
        index.write_text(index.read_text().replace("20, null", "21, null"))  # a planted count shows it was read
        assert listing(ro) == [("a.mp4", 21)]
    finally:
        os.chmod(ro, 0o755)


def test_davis_frame_folders(davis):
    folder = davis / "davis2017-mini" / "JPEGImages" / "480p"
    before = sorted(os.listdir(folder))
    ds = data.ClipDataset(str(folder), image_size=32)
    assert len(ds.sources[0]["videos"]) == len(before) and ds.n_skipped == 0
    ex = ds.example(0)
    assert ex["source"].shape == (4, 3, 32, 32) and ex["target"].shape == (4, 3, 32, 32)
    assert ex["source"].float().std() > 5, "real pixels, not a blank frame"
    assert sorted(os.listdir(folder)) == before, "nothing is written into the (read-only) data folder"


def test_jpeg_frames_decode_at_a_reduced_size_no_smaller_than_asked(tmp_path):
    """min_side: JPEGs come out of the decoder's own 1/2, 1/4 or 1/8 scaling, each side still >= min_side, close to
    the whole frame averaged down; PNGs are read whole."""
    frame = np.random.default_rng(3).integers(0, 256, (6, 8, 3), dtype=np.uint8).repeat(80, 0).repeat(80, 1)
    os.makedirs(tmp_path / "jpg")
    iio.imwrite(tmp_path / "jpg" / "00000.jpg", frame, quality=95)
    whole = data.read_frames(tmp_path / "jpg", [0])[0]
    assert whole.shape == (480, 640, 3)
    for min_side, shape in [(100, (120, 160)), (240, (240, 320)), (241, (480, 640)), (60, (60, 80))]:
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
    assert np.array_equal(data.to_rgb((gray.astype(np.uint16) << 8) + 255), np.repeat(gray[:, :, None], 3, 2))
    with pytest.raises(ValueError):
        data.to_rgb(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError):
        data.to_rgb(np.zeros((3, 4, 5), np.uint8))


def test_bad_files_are_skipped_or_converted_and_counted(tmp_path, capsys):
    write_video(str(tmp_path / "good1.mp4"), coded_frames(20, 0))
    write_video(str(tmp_path / "good2.mkv"), coded_frames(20, 1))
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (tmp_path / "empty.webm").write_bytes(b"")
    (tmp_path / "notes.avi").write_text("not a video at all\n")
    (tmp_path / "readme.txt").write_text("ignored: not a video extension\n")
    write_video(str(tmp_path / "short.mp4"), coded_frames(5, 2))
    y, x = np.mgrid[0:37, 0:51]
    write_pngs(tmp_path / "gray", [((x + y + 5 * i) % 256).astype(np.uint8) for i in range(16)])  # odd size, 2-D
    rgba = np.zeros((16, 32, 32, 4), np.uint8)
    rgba[..., :3] = (200, 50, 100)
    rgba[..., 3] = np.random.default_rng(1).integers(0, 256, (16, 32, 32))
    write_pngs(tmp_path / "rgba", rgba)

    ds = data.ClipDataset(str(tmp_path), image_size=16)
    assert ds.skipped == Counter(unreadable=3, too_short=1) and ds.n_skipped == 4
    err = capsys.readouterr().err
    for name in ["corrupt.mp4", "empty.webm", "notes.avi", "short.mp4"]:
        assert sum(name in line for line in err.splitlines()) == 1, f"one warning line naming {name}"
    assert "readme.txt" not in err
    assert len(ds.sources[0]["videos"]) == 4

    kinds = Counter()
    for k in range(60):
        clip = torch.cat([(ex := ds.example(k))["source"], ex["target"]])
        assert clip.shape == (8, 3, 16, 16) and ex["skipped"] == 0
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
    write_video(str(tmp_path / "a.mp4"), block_frames(10, 32))  # now it ends early: the index still says 70
    capsys.readouterr()
    examples = [ds.example(k) for k in range(30)]
    assert ds.skipped["decode"] > 0 and sum(int(ex["skipped"]) for ex in examples) == ds.skipped["decode"]
    err = capsys.readouterr().err
    assert sum("a.mp4" in line for line in err.splitlines()) == 1, "one warning line for the file"
    for ex in examples:
        if ex["skipped"]:
            idx, vid, flat = frame_ids(ex)
            assert flat.all() and (vid == 1).all() and torch.equal(idx, ex["frame_idx"]), "the retry is clean"
    assert all(same(ex, ds.example(k)) for k, ex in enumerate(examples)), "skips do not break determinism"


# ---------------------------------------------------------------------------- determinism, resuming, the loader


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
        assert all(not torch.equal(a["source"], b["source"]) for a, b in zip(base, other, strict=True))
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
        assert all(same(a, b) for a, b in zip(base, batches(n_workers), strict=True)), f"{n_workers} workers"
    resumed = batches(2, start=4, n=1)[0]
    assert torch.equal(resumed["index"], torch.tensor([4, 5, 6]))
    assert same(resumed, {k: torch.stack([ds.example(i)[k] for i in range(4, 7)]) for k in resumed})


def test_mixture_follows_the_weights(tmp_path):
    write_pngs(tmp_path / "a" / "v", coded_frames(20, 0, size=(8, 8)))
    write_pngs(tmp_path / "b" / "v", coded_frames(20, 1, size=(8, 8)))
    ds = data.ClipDataset([(str(tmp_path / "a"), 0.8), (str(tmp_path / "b"), 0.2)], image_size=8)
    from_a = sum(int(frame_ids(ds.example(k))[1][0]) == 0 for k in range(300))
    assert 0.72 <= from_a / 300 <= 0.88, from_a
    mixed = data.ClipDataset([(str(tmp_path / "a"), 1), ("noise_square", 1)], image_size=8)
    assert "source_mask" not in mixed.example(0), "masks only when every source has them"
    batch = next(iter(data.make_loader(mixed, 4)))
    assert batch["target"].shape == (4, 4, 3, 8, 8)


# ---------------------------------------------------------------------------- the white-noise square


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
        assert abs(outside.mean() - 127.5) < 1.0 and abs(outside.std() - 73.9) < 1.0, "uniform noise"
        assert ks(inside, outside) < 0.01, "same histogram inside and outside the square"
        assert ks(inside // 2 + 64, outside) > 0.1, "(the check can tell a visible square)"


def test_noise_square_options():
    video, masks = data.noise_square_video(size=512, direction="left")
    assert masks[10, 256, 256 - 10 * 256 // 64 + 255] and not masks[10, 256, 256 - 10 * 256 // 64 + 256]
    assert masks[0, 128:384, 256:512].all() and masks[63, 128:384, 4:260].all()

    video, masks = data.noise_square_video(n_frames=30, size=64, square_size=16, speed=3, direction="down", seed=2)
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
    assert not torch.equal(ds.example(0)["source"], ds.example(1)["source"]), "a fresh video per example"

    ds = data.ClipDataset("noise_square:square=6-10,speed=0.2-0.8,direction=left|up", image_size=64)
    sides, directions = set(), Counter()
    for k in range(40):
        ex = ds.example(k)
        mask = torch.cat([ex["source_mask"], ex["target_mask"]])
        t = ex["frame_idx"]
        rows, cols = mask[0].any(1).nonzero()[:, 0], mask[0].any(0).nonzero()[:, 0]
        side = len(rows)
        assert len(cols) == side and 6 <= side <= 10 and (mask.sum((1, 2)) == side * side).all(), "inside the frame"
        sides.add(side)
        j = int(t.argmax())
        r, c = mask[j].any(1).nonzero()[0, 0], mask[j].any(0).nonzero()[0, 0]
        dy, dx = int(r - rows[0]), int(c - cols[0])
        assert dy <= 0 and dx <= 0 and (dy == 0) != (dx == 0), "moves left or up only"
        directions["up" if dy else "left"] += 1
        speed = -(dx + dy) / int(t[j])
        assert 0.2 - 1 / int(t[j]) <= speed <= 0.8 + 1 / int(t[j]), speed
    assert len(sides) >= 4 and directions["up"] and directions["left"]
