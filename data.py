"""Training clips for RVM: videos (or frame folders, or a white-noise square) in, uint8 clips out.

Point it at folders of your own videos and get the stream of training examples the paper samples
(supplement §7); with no files at all, `'noise_square'` gives the white-noise square stimulus of §4.4.

The sampling rule (§4.1, supplement §7). An example is a window of `window` = 64 frames of one video:

    frames  s, s+1, s+2, s+3                  the 4 consecutive source frames
    frames  s+3+g_1, ..., s+3+g_4             4 targets, each gap g_j ~ U{4..48} drawn independently
    deltas  Δ_j = 3 + g_j                     counted from the FIRST source frame, so 7 <= Δ < 64,
                                              which is what the decoder's one-hot(Δ, 64) needs

with the window start s uniform over the video. A video shorter than the window uses all of it
(length L = n_frames) and limits the gaps to what exists, g <= L - 4; a video too short for even
one target with gap 4 (fewer than n_source + gap_min = 8 frames) is skipped and counted.
Then the whole clip is flipped horizontally with p = 0.5 and cropped with RandomResizedCrop,
scale (0.3, 1.0), ratio (0.75, 1.25), bicubic to 256x256. The paper says "frame-level" crop; one
box per clip keeps the motion between frames coherent, so that is the default (SPEC §2) and
`per_frame_crop=True` draws a box per frame.

Sources. A source spec is one of
    '/path/to/folder'   every video file (mp4 webm avi mkv mov gif) below it, and every folder
                        holding jpg/png frames (one folder = one video, frames in name order);
                        videos decoded with PyAV (imageio's pyav backend), images read with imageio.
    'noise_square'      the seeded, endless white-noise square (below); options go after a colon:
                        'noise_square:square=16-32,speed=1-4,direction=any'
                          square=N or A-B     side in pixels (default: half the frame, as the authors)
                          speed=V or A-B      pixels per frame (default: the authors' formula, below)
                          direction=D or D|D  right, left, up, down, or any (default: right)
                          refresh=N or A-B    redraw the square's texture every N frames (default 0:
                                              never, the authors' rigid square)
                        ranges are drawn per example. Noise clips get no flip or crop: the crop would
                        rescale (blur) the noise, and direction=any already covers the flip.
and `sources` is one spec or a list of (spec, weight): each example first picks a source by weight,
then a video uniformly within it. The paper's mixture (supplement Table 4) would read

    ClipDataset([('/data/ssv2', 0.056), ('/data/kinetics700', 0.188), ('/data/howto100m', 0.318),
                 ('/data/yt8m', 0.188), ('/data/ytbb', 0.250)])

Decoding only what an example needs. 8 of the window's 64 frames are used, so: seek to the keyframe
before the first needed frame (where the container allows), decode forward, convert only the needed
frames to RGB arrays, let the decoder drop unneeded frames that no other frame refers to, and stop
after the last needed frame. (The frames up to the last target still have to be decoded, since
each refers to the ones before it: on H.264 this comes out 1.7-1.9x faster than converting the whole
window, ~6x on jpg frame folders, ~10x against decoding the whole video.) Frame counts
are found once per folder (a tqdm bar) and cached in `<folder>/.rvm_index.json`; for a read-only
folder in ~/.cache/rvm (or $RVM_CACHE_DIR). A restart re-lists the folder but only probes files that
are new or changed; delete the JSON to force a full rescan.

Bad input never stops training. Grayscale and RGBA frames become RGB (channel repeated / alpha
dropped). Unreadable, corrupt, empty, non-video and too-short files are skipped at startup, a video
that fails while decoding (ends early, frames of mixed sizes, ...) is skipped when it is drawn:
each with one warning line naming the file, and counted in `dataset.skipped` (a Counter;
`dataset.n_skipped` is its total). A source where nothing is readable is a ValueError at startup.

Determinism and resuming. Example k of rank r is a pure function of (seed, rank, k): every random
draw comes from np.random.default_rng([seed, rank, k, attempt]), where attempt counts the skips of
bad videos (a retry draws afresh, deterministically). No global RNG is used, so per-worker seeding is
built in: different ranks get different streams, the same seed gives the same stream, and the
number of DataLoader workers changes nothing (batches come out in index order). To resume, rebuild
the loader with `start = examples this rank has consumed`.

API (what train.py uses):

    noise_square_video(n_frames=64, size=512, square_size=None, speed=None, direction='right', seed=0)
        -> (video uint8 [T, 3, H, W], masks bool [T, H, W]) torch tensors
    ClipDataset(sources, *, image_size=256, n_source=4, n_target=4, gap_min=4, gap_max=48, window=64,
                per_frame_crop=False, flip_p=0.5, crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.25),
                seed=0, rank=0, start=0)
        an endless IterableDataset; dataset.example(k) builds example k. An example is a dict:
            'source'  uint8 [n_source, 3, S, S]     'target'  uint8 [n_target, 3, S, S]
            'deltas'  int64 [n_target]              'frame_idx' int64 [n_source + n_target] (in the video)
            'index'   int64 []  (= k)               'skipped' int64 []  (bad draws retried to make it)
            and, when every source is noise_square, 'source_mask' bool [n_source, S, S] and
            'target_mask' bool [n_target, S, S], the square's ground truth. At image_size=S a
            noise clip is the authors' stimulus at S x S (T = window) unless options say otherwise.
    make_loader(dataset, batch_size, num_workers=0) -> DataLoader of batched dicts (uint8 [B, T, 3, S, S])
        starting at example dataset.start, in index order for any num_workers (use it rather than
        putting the ClipDataset in a DataLoader yourself: that interleaves examples across workers).

Clips stay uint8 all the way: convert on the device, `x = batch['source'].to(device).float() / 255`.

    python data.py --bench /path/to/videos      examples/s for 0, 1, 2 workers; needed vs whole-window decode
    python data.py --bench noise_square         the same with no files
"""

import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
from collections import Counter

import av
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".gif")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
INDEX_NAME = ".rvm_index.json"
INDEX_VERSION = 1
CACHE_DIR = os.environ.get("RVM_CACHE_DIR", os.path.expanduser("~/.cache/rvm"))
DIRECTIONS = ("right", "left", "up", "down")
# PyAV >= 17 converts frames to RGB on a thread pool; one thread is faster (the DataLoader workers are the parallelism)
TO_RGB = {"format": "rgb24", "threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {"format": "rgb24"}

# -----------------------------------------------------------------------------
# The white-noise square (§4.4, Fig. 6)


def _noise_square_frames(rng, t, height, width, square, speed, direction, n_frames, offset=0, refresh=0):
    """Frames `t` (int array) of one noise-square video: uint8 [len(t), 3, H, W], bool masks [len(t), H, W].

    Only the asked-for frames are made. The background and the square's texture are drawn once,
    so the background is static and the square slides rigidly: every frame alone is uniform noise.
    refresh > 0: the square's texture is drawn anew every `refresh` frames instead (a moving
    patch of flicker: where the square is can be predicted, what it shows cannot).
    """
    sh, sw = square
    background = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
    texture = rng.integers(0, 256, (3, sh, sw), dtype=np.uint8)
    flicker_seed = int(rng.integers(2**31)) if refresh else None  # drawn only then: rigid streams unchanged
    horizontal = direction in ("left", "right")
    room = width - sw if horizontal else height - sh  # free travel along the motion axis
    t = np.asarray(t)
    if speed is None:
        pos = t * room // n_frames  # the authors' stimulus: left edge at t * (W - W//2) // T
    else:
        pos = offset + np.floor(speed * t).astype(np.int64)
    if direction in ("left", "up"):
        pos = room - pos
    video = np.repeat(background[None], len(t), axis=0)
    masks = np.zeros((len(t), height, width), dtype=bool)
    for i, p in enumerate(pos):
        y, x = ((height - sh) // 2, p) if horizontal else (p, (width - sw) // 2)  # centred across the motion
        y0, y1, x0, x1 = max(y, 0), min(y + sh, height), max(x, 0), min(x + sw, width)  # a fast square may leave
        if refresh:  # the same frame always gets the same texture, whichever frames are asked for
            texture = np.random.default_rng((flicker_seed, int(t[i]) // refresh)).integers(
                0, 256, (3, sh, sw), dtype=np.uint8)
        if y0 < y1 and x0 < x1:
            video[i, :, y0:y1, x0:x1] = texture[:, y0 - y : y1 - y, x0 - x : x1 - x]
            masks[i, y0:y1, x0:x1] = True
    return video, masks


def noise_square_video(n_frames=64, size=512, square_size=None, speed=None, direction="right", seed=0):
    """The white-noise square stimulus: (video uint8 [T, 3, H, W], masks bool [T, H, W]).

    At the defaults this is the authors' demo: 512x512 uniform noise, a 256x256 square of its own
    noise, vertically centred, whose left edge at frame t of T is at t * (W - W//2) // T.
    size and square_size are an int or (H, W); square_size=None is half the frame.
    speed=None follows that formula (the square crosses the frame once); a number is pixels per
    frame from the starting edge, and a square that runs off the frame is clipped (so is its mask).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    height, width = (size, size) if isinstance(size, int) else size
    if square_size is None:
        square_size = (height // 2, width // 2)
    elif isinstance(square_size, int):
        square_size = (square_size, square_size)
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)
    video, masks = _noise_square_frames(rng, t, height, width, square_size, speed, direction, n_frames)
    return torch.from_numpy(video), torch.from_numpy(masks)


def parse_noise_square(spec):
    """'noise_square[:square=A-B,speed=A-B,direction=D|D,refresh=A-B]' -> dict of options (ranges as (lo, hi))."""
    name, _, rest = spec.partition(":")
    assert name == "noise_square", spec
    opts = {"square": None, "speed": None, "direction": ("right",), "refresh": (0, 0)}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        lo, _, hi = value.partition("-")
        if key == "square":
            opts["square"] = (int(lo), int(hi or lo))
        elif key == "speed":
            opts["speed"] = (float(lo), float(hi or lo))
        elif key == "refresh":
            opts["refresh"] = (int(lo), int(hi or lo))
            if not 0 <= opts["refresh"][0] <= opts["refresh"][1]:
                raise ValueError(f"{spec}: refresh must be N >= 0 frames or a range A-B with 0 <= A <= B")
        elif key == "direction":
            opts["direction"] = DIRECTIONS if value == "any" else tuple(value.split("|"))
            if not set(opts["direction"]) <= set(DIRECTIONS):
                raise ValueError(f"{spec}: direction must be 'any' or '|'-separated {DIRECTIONS}")
        else:
            raise ValueError(f"{spec}: unknown noise_square option {key!r} (square, speed, direction, "
                             "refresh)")
    return opts


# -----------------------------------------------------------------------------
# Reading frames: only the ones asked for


def _to_rgb(a):
    """Any uint8/uint16 image as uint8 H x W x 3: gray -> repeated, gray+alpha / RGBA -> alpha dropped."""
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"not an image: array of shape {a.shape}")
    if a.shape[2] <= 2:
        return np.repeat(a[:, :, :1], 3, axis=2)
    return a[:, :, :3]


def _stack(frames):
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"frames of different sizes {sorted({f.shape for f in frames})}")
    return np.stack(frames)


def _natural_key(name):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]  # frame_2 before frame_10


def _image_names(folder):
    return sorted((f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")),
                  key=_natural_key)


def read_image_frames(folder, indices):
    """Frames `indices` of a frame folder as uint8 [len(indices), H, W, 3]; reads only those files."""
    names = _image_names(folder)
    cache = {}
    for i in indices:
        if i not in cache:
            if i >= len(names):
                raise EOFError(f"frame folder has {len(names)} frames, frame {i} was asked for")
            cache[i] = _to_rgb(iio.imread(os.path.join(folder, names[i])))
    return _stack([cache[i] for i in indices])


class _NotConstantRate(Exception):
    pass


def _decode(path, want, by_pts):
    """{index: H x W x 3 array} for the sorted frame indices `want` of a video file.

    by_pts=True names frames by their timestamps, index = (pts - start) * time_base * fps, which is
    what lets us seek and lets the decoder drop frames. It raises _NotConstantRate when a timestamp
    is off that grid (variable frame rate, a wrong rate in the header, a seek that overshot), and the
    caller falls back to by_pts=False: decode from the start and count frames one by one.
    We open files with PyAV itself, the decoder under imageio's pyav plugin: the plugin only hands
    out converted arrays, and its close() runs a full gc.collect(), ~0.1 s in a big process.
    """
    wanted, last = set(want), want[-1]
    got = {}
    n = -1  # index of the last frame that came out of the decoder
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate, time_base, t0 = stream.average_rate, stream.time_base, stream.start_time or 0
        # gif frames are painted over the previous one: no keyframe to seek to, no frame to drop
        if by_pts and not (rate and time_base and container.format.name != "gif"):
            raise _NotConstantRate

        def index(pts):
            x = None if pts is None else (pts - t0) * time_base * rate
            if x is None or abs(x - round(x)) > 0.25:
                raise _NotConstantRate
            return round(x)

        if by_pts and want[0] > 0:
            container.seek(int(t0 + want[0] / (time_base * rate)), stream=stream)  # to a keyframe at or before
        for packet in container.demux(stream):
            if by_pts and packet.size:
                # a frame we do not want, that no other frame refers to, need not be decoded at all
                stream.codec_context.skip_frame = "DEFAULT" if index(packet.pts) in wanted else "NONREF"
            for frame in packet.decode():
                i = index(frame.pts) if by_pts else n + 1
                if i <= n or (n < 0 and i > want[0]):  # out of order, or the seek went past the first frame
                    raise _NotConstantRate
                n = i
                if i in wanted:
                    got[i] = frame.to_ndarray(**TO_RGB)
                if i >= last:
                    return got
    if by_pts:
        raise _NotConstantRate  # ran out early: count frames one by one to be sure
    raise EOFError(f"video ended after {n + 1} frames, frame {last} was asked for")


def read_video_frames(path, indices):
    """Frames `indices` of a video file as uint8 [len(indices), H, W, 3], decoding only what it must."""
    want = sorted({int(i) for i in indices})
    try:
        got = _decode(path, want, by_pts=True)
    except _NotConstantRate:
        got = _decode(path, want, by_pts=False)
    return _stack([got[int(i)] for i in indices])


def read_frames(path, indices, is_frame_folder):
    return read_image_frames(path, indices) if is_frame_folder else read_video_frames(path, indices)


def _probe_video(path):
    """Number of frames of a video file; raises if it cannot be opened or its first frame not decoded."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        next(container.decode(stream))  # a file whose header is fine but whose data is not fails here
        n = stream.frames
    if n <= 0:  # no count in the header (webm, mkv): count packets, which needs no decoding
        with av.open(path) as container:
            n = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
    return n


# -----------------------------------------------------------------------------
# Indexing a folder, once


def _writable(folder):
    # root may write anywhere; also honour a folder marked read-only (r-x), so shared data stays untouched
    return os.access(folder, os.W_OK) and bool(os.stat(folder).st_mode & 0o222)


def _cache_paths(folder):
    """Where the index of `folder` lives: beside the data, or in CACHE_DIR when the folder is read-only."""
    key = hashlib.sha1(os.path.abspath(folder).encode()).hexdigest()[:16]
    return os.path.join(folder, INDEX_NAME), os.path.join(CACHE_DIR, f"index-{key}.json")


def index_folder(folder):
    """Every video below `folder`: a sorted list of (relative path, n_frames, is_frame_folder, error).

    Frame folders are counted while listing; video files are probed (opened, first frame decoded,
    frames counted) once, and the result cached by (size, mtime) so a restart probes nothing old.
    """
    beside, fallback = _cache_paths(folder)
    cached = {}
    for path in (beside, fallback):
        try:
            with open(path) as f:
                index = json.load(f)
            if index.get("version") == INDEX_VERSION:
                cached = index["videos"]
                break
        except (OSError, ValueError):
            pass
    entries, files = [], {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):  # datasets are often symlinked in
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, folder)
        n_images = sum(f.lower().endswith(IMAGE_EXTS) and not f.startswith(".") for f in filenames)
        if n_images:
            entries.append((rel, n_images, True, None))
        for f in sorted(filenames):
            if f.lower().endswith(VIDEO_EXTS) and not f.startswith("."):
                st = os.stat(os.path.join(dirpath, f))
                files[os.path.normpath(os.path.join(rel, f))] = [st.st_size, st.st_mtime_ns]
    videos = {rel: cached[rel] for rel, key in files.items() if rel in cached and cached[rel][:2] == key}
    todo = [rel for rel in files if rel not in videos]
    for rel in tqdm(todo, desc=f"indexing {folder}", disable=not todo):
        try:
            n, error = _probe_video(os.path.join(folder, rel)), None
        except Exception as e:  # anything a broken file throws
            n, error = 0, f"{type(e).__name__}: {e}"
        videos[rel] = files[rel] + [n, error]
    if todo or len(videos) != len(cached):
        index = {"version": INDEX_VERSION, "folder": os.path.abspath(folder), "videos": videos}
        path = beside if _writable(folder) else fallback
        if path == fallback:
            print(f"rvm data: {folder} is read-only, frame index cached in {fallback}", file=sys.stderr)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + f".tmp{os.getpid()}", "w") as f:
                json.dump(index, f)
            os.replace(path + f".tmp{os.getpid()}", path)  # atomic: ranks indexing at once do not clash
        except OSError as e:
            print(f"rvm data: could not write the frame index {path}: {e}", file=sys.stderr)
    entries += [(rel, v[2], False, v[3]) for rel, v in videos.items()]
    return sorted(entries)


# -----------------------------------------------------------------------------
# Sampling a clip and augmenting it (supplement §7)


def sample_clip(rng, n_frames, n_source=4, n_target=4, gap_min=4, gap_max=48, window=64):
    """(frame_idx int64 [n_source + n_target], deltas int64 [n_target]) for one clip of a video.

    The window of L = min(window, n_frames) frames starts uniformly in the video; the sources are its
    first n_source frames, each target lies gap ~ U{gap_min..min(gap_max, L - n_source)} after the
    last source, and Δ = (n_source - 1) + gap is counted from the first source frame.
    """
    length = min(window, n_frames)
    gap_hi = min(gap_max, length - n_source)
    if gap_hi < gap_min:
        raise ValueError(f"a video of {n_frames} frames is too short (< {n_source + gap_min})")
    start = rng.integers(0, n_frames - length + 1)
    deltas = (n_source - 1) + rng.integers(gap_min, gap_hi + 1, size=n_target)
    return start + np.concatenate([np.arange(n_source), deltas]), deltas


def random_resized_crop_box(rng, height, width, scale=(0.3, 1.0), ratio=(0.75, 1.25)):
    """(top, left, h, w), torchvision's RandomResizedCrop.get_params with a numpy generator.

    Up to 10 tries at an area fraction ~ U(scale) and a log-uniform aspect ratio w/h; if none fits,
    the largest centred box whose aspect ratio lies within `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(x, size):
    """uint8 [T, 3, h, w] -> uint8 [T, 3, size, size], bicubic (antialiased, like torchvision and PIL)."""
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    y = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def augment(clip, rng, size, flip_p=0.5, scale=(0.3, 1.0), ratio=(0.75, 1.25), per_frame_crop=False):
    """uint8 [T, 3, H, W] -> uint8 [T, 3, size, size]: a flip of the whole clip, then RandomResizedCrop."""
    flip = rng.random() < flip_p  # video-level: every frame or none (supplement §7)
    height, width = clip.shape[-2:]
    if per_frame_crop:
        frames = []
        for frame in clip:
            t, l, h, w = random_resized_crop_box(rng, height, width, scale, ratio)
            frames.append(_resize(frame[None, :, t : t + h, l : l + w], size))
        out = torch.cat(frames)
    else:
        t, l, h, w = random_resized_crop_box(rng, height, width, scale, ratio)  # one box: motion stays coherent
        out = _resize(clip[:, :, t : t + h, l : l + w], size)
    return out.flip(-1) if flip else out


# -----------------------------------------------------------------------------
# The dataset


class ClipDataset(torch.utils.data.IterableDataset):
    """An endless, seeded stream of training examples; example k is `self.example(k)` (see the top)."""

    def __init__(self, sources, *, image_size=256, n_source=4, n_target=4, gap_min=4, gap_max=48, window=64,
                 per_frame_crop=False, flip_p=0.5, crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.25),
                 seed=0, rank=0, start=0):
        super().__init__()
        assert 1 <= gap_min <= gap_max and n_source >= 1 and n_target >= 1
        assert n_source - 1 + gap_max < window, "every target must lie inside the window (Δ < window)"
        assert seed >= 0 and rank >= 0 and start >= 0
        self.image_size, self.n_source, self.n_target = image_size, n_source, n_target
        self.gap_min, self.gap_max, self.window = gap_min, gap_max, window
        self.per_frame_crop, self.flip_p = per_frame_crop, flip_p
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        self.seed, self.rank, self.start = seed, rank, start
        self.skipped = Counter()  # 'unreadable', 'too_short' (at startup), 'decode' (while training)
        self._warned = set()
        if isinstance(sources, str):
            sources = [sources]
        specs = [(s, 1.0) if isinstance(s, str) else s for s in sources]  # a bare spec weighs 1
        weights = np.array([w for _, w in specs], dtype=np.float64)
        if len(specs) == 0 or (weights <= 0).any():
            raise ValueError(f"sources must be a spec or a list of (spec, weight > 0), got {sources!r}")
        self.weights = weights / weights.sum()
        self.sources = [self._open(spec) for spec, _ in specs]
        self.masks = all(s["kind"] == "noise" for s in self.sources)  # only then can every example carry masks

    @property
    def n_skipped(self):
        return sum(self.skipped.values())

    def _skip(self, path, reason, kind):
        self.skipped[kind] += 1
        if path not in self._warned:  # one line per file, however often it is drawn
            self._warned.add(path)
            print(f"rvm data: skipping {path}: {reason} ({self.n_skipped} skipped so far)", file=sys.stderr)

    def _open(self, spec):
        if spec.partition(":")[0] == "noise_square":
            opts = parse_noise_square(spec)
            if opts["square"] and not 1 <= opts["square"][0] <= opts["square"][1] <= self.image_size:
                raise ValueError(f"{spec}: the square must fit in the {self.image_size}px frame")
            return {"kind": "noise", "spec": spec, **opts}
        folder = os.path.expanduser(spec)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"data folder not found: {folder}")
        entries = index_folder(folder)
        if not entries:
            raise ValueError(f"no videos ({' '.join(VIDEO_EXTS)}) or frame folders found in {folder}")
        videos = []
        for rel, n, is_frames, error in entries:
            path = os.path.join(folder, rel)
            if error:
                self._skip(path, error, "unreadable")
            elif n < self.n_source + self.gap_min:
                self._skip(path, f"too short ({n} frames < {self.n_source + self.gap_min})", "too_short")
            else:
                videos.append((path, n, is_frames))
        if not videos:
            raise ValueError(f"nothing readable in {folder}: {len(entries)} videos, all unreadable or too short")
        n_dirs = sum(v[2] for v in videos)
        print(f"rvm data: {folder}: {len(videos)} videos ({len(videos) - n_dirs} files, {n_dirs} frame folders), "
              f"{len(entries) - len(videos)} skipped", file=sys.stderr)
        return {"kind": "folder", "spec": spec, "videos": videos}

    def example(self, k):
        """Example k of this rank's stream: a pure function of (seed, rank, k)."""
        for attempt in range(100):
            rng = np.random.default_rng([self.seed, self.rank, k, attempt])
            source = self.sources[rng.choice(len(self.sources), p=self.weights)]
            ex = self._noise_example(rng, source) if source["kind"] == "noise" else self._video_example(rng, source)
            if ex is not None:
                ex["index"] = torch.tensor(k)
                ex["skipped"] = torch.tensor(attempt)
                return ex
        raise RuntimeError(f"100 videos in a row failed to decode for example {k}; see the warnings above")

    def _split(self, clip, frame_idx, deltas):
        ns = self.n_source
        return {"source": clip[:ns], "target": clip[ns:], "deltas": torch.from_numpy(deltas),
                "frame_idx": torch.from_numpy(frame_idx)}

    def _video_example(self, rng, source):
        path, n, is_frames = source["videos"][rng.integers(len(source["videos"]))]
        frame_idx, deltas = sample_clip(rng, n, self.n_source, self.n_target, self.gap_min, self.gap_max, self.window)
        try:
            frames = read_frames(path, frame_idx, is_frames)
        except Exception as e:  # a bad video is skipped, never fatal
            self._skip(path, f"{type(e).__name__}: {e}", "decode")
            return None
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
        clip = augment(clip, rng, self.image_size, self.flip_p, self.crop_scale, self.crop_ratio, self.per_frame_crop)
        return self._split(clip, frame_idx, deltas)

    def _noise_example(self, rng, source):
        size, window = self.image_size, self.window
        frame_idx, deltas = sample_clip(rng, window, self.n_source, self.n_target, self.gap_min, self.gap_max, window)
        lo, hi = source["square"] or (size // 2, size // 2)  # default: half the frame, as the authors
        side = int(rng.integers(lo, hi + 1))
        speed = None if source["speed"] is None else float(rng.uniform(*source["speed"]))
        direction = source["direction"][rng.integers(len(source["direction"]))]
        offset = 0
        if speed is not None:  # start anywhere that keeps the square inside the frame for the whole window
            offset = int(rng.integers(0, max(0, size - side - math.floor(speed * (window - 1))) + 1))
        refresh = int(rng.integers(source["refresh"][0], source["refresh"][1] + 1)) if source["refresh"][1] else 0
        video, masks = _noise_square_frames(rng, frame_idx, size, size, (side, side), speed, direction, window, offset,
                                            refresh)
        ex = self._split(torch.from_numpy(video), frame_idx, deltas)
        if self.masks:
            masks = torch.from_numpy(masks)
            ex["source_mask"], ex["target_mask"] = masks[: self.n_source], masks[self.n_source :]
        return ex

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        for k in itertools.count(self.start + worker, n_workers):
            yield self.example(k)


class _Batches(torch.utils.data.IterableDataset):
    """Whole batches: batch b holds examples start + b*B ... start + b*B + B-1. Worker w makes batches
    w, w + n_workers, ... and the DataLoader takes them from the workers in turn, so batches come out
    in index order whatever the number of workers."""

    def __init__(self, dataset, batch_size):
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        for b in itertools.count(worker, n_workers):
            first = self.dataset.start + b * self.batch_size
            examples = [self.dataset.example(k) for k in range(first, first + self.batch_size)]
            # numpy's stack: torch's would fan out to intra-op threads, all waiting on a busy CPU
            yield {key: torch.from_numpy(np.stack([ex[key].numpy() for ex in examples])) for key in examples[0]}


def make_loader(dataset, batch_size, num_workers=0):
    """A DataLoader of batched uint8 clips from `dataset`, starting at example `dataset.start`.

    No worker seeding is needed: each example seeds its own generator from (seed, rank, k).
    Memory is pinned only when there is a GPU to copy to.
    """
    return torch.utils.data.DataLoader(_Batches(dataset, batch_size), batch_size=None, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available())


# -----------------------------------------------------------------------------
# python data.py --bench PATH|noise_square


def bench(spec, image_size=256, batch_size=16, n_batches=8, workers=(0, 1, 2), n_clips=20):
    """Prints and returns examples/s per worker count and the needed-frames vs whole-window decode times."""
    dataset = ClipDataset(spec, image_size=image_size)
    result = {"examples_s": {}}
    for n_workers in workers:
        it = iter(make_loader(dataset, batch_size, n_workers))
        next(it)  # start-up: forking workers, first decodes
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        dt = time.perf_counter() - t0
        rate = n_batches * batch_size / dt
        print(f"{n_workers} workers: {rate:7.1f} examples/s ({image_size}px, batch {batch_size})")
        result["examples_s"][n_workers] = rate
        del it
    folders = [s for s in dataset.sources if s["kind"] == "folder"]
    if not folders:
        print("decode: nothing to decode for noise_square (frames are generated directly)")
        return result
    rng = np.random.default_rng(0)
    t_needed = t_window = t_video = n_video = 0
    for _ in range(n_clips):
        videos = folders[rng.integers(len(folders))]["videos"]
        path, n, is_frames = videos[rng.integers(len(videos))]
        frame_idx, _ = sample_clip(rng, n)
        t0 = time.perf_counter()
        read_frames(path, frame_idx, is_frames)  # the 8 frames of the example
        t1 = time.perf_counter()
        read_frames(path, np.arange(frame_idx[0], frame_idx[0] + min(64, n)), is_frames)  # all 64 of its window
        t2 = time.perf_counter()
        t_needed, t_window = t_needed + t1 - t0, t_window + t2 - t1
        if not is_frames and n <= 1000:  # for scale, the naive way: imageio decodes and converts the whole video
            iio.imread(path, plugin="pyav")
            t_video, n_video = t_video + time.perf_counter() - t2, n_video + 1
    print(f"decode: needed frames only {1e3 * t_needed / n_clips:.1f} ms/clip, whole window "
          f"{1e3 * t_window / n_clips:.1f} ms/clip -> {t_window / t_needed:.1f}x faster")
    result.update(needed_ms=1e3 * t_needed / n_clips, window_ms=1e3 * t_window / n_clips,
                  needed_speedup=t_window / t_needed)
    if n_video:
        print(f"decode: whole video with imageio {1e3 * t_video / n_video:.1f} ms/clip")
        result["whole_video_imageio_ms"] = 1e3 * t_video / n_video
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", required=True, help="a folder of videos / frame folders, or noise_square")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--n_batches", type=int, default=8)
    args = parser.parse_args()
    bench(args.bench, args.image_size, args.batch_size, args.n_batches)
