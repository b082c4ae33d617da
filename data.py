"""Training clips for RVM: videos, frame folders or the white-noise square in, uint8 clips out.

The sampling rule (§4.1, supplement §7). An example is a window of `window` = 64 frames of a
video:

    frames  s, s+1, s+2, s+3                  the 4 consecutive source frames
    frames  s+3+g_1, ..., s+3+g_4             4 targets, each gap g_j ~ U{4..48} drawn independently
    deltas  Δ_j = 3 + g_j                     from the FIRST source frame (the authors' way)

with the window's start s uniform over the video. A video shorter than the window is used whole
and its gaps are limited to what exists. The whole clip is then flipped with p = 0.5 and cropped
with RandomResizedCrop (scale 0.3-1, ratio 0.75-1.25, bicubic) to 256 x 256. The paper says
"frame-level" crop; we draw one box per clip, so that the motion between frames stays what it
was, and `per_frame_crop=True` draws one per frame.

Repeated sampling (ours, after MAE-ST; the paper draws one example per window): R examples in
a row share one window of a video, decoded once, each with its own start in it, gaps, flip, crop
and mask. A video file decodes from a keyframe on: R examples cost little more than one.

Corpora: a folder (every video file below it, and every folder of jpg/png frames, one video
each), 'noise_square' (the stimulus of §4.4, made on the fly), or a weighted mixture of them
[(spec, weight), ...] as the paper's (supplement Table 4). A video that cannot give the frames
asked for is skipped with one warning and counted by its reason (SKIPS); training goes on.

Determinism: example k of stream r is a pure function of (seed, r, k) -- every draw comes from
np.random.default_rng([seed, r, k // R, attempt]) -- so the number of loader workers changes
nothing, and a run resumes exactly by starting the stream at the example it had reached.
Clips stay uint8 until the device: x = batch['source'].to(device).float() / 255.

For speed, `python data.py --src=VIDEOS --dst=PREPARED` copies a folder in the form read fastest
(prepare_video; docs/bench.md: clips/s per core, disk per hour of video).
"""

import argparse
import copy
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import sys
from collections import Counter

import av
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".gif")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
INDEX_NAME = ".rvm_index.json"  # frame counts of a folder's videos, cached beside them
# ... or here, if the folder is read-only
CACHE_DIR = os.environ.get("RVM_CACHE_DIR", os.path.expanduser("~/.cache/rvm"))
DIRECTIONS = ("right", "left", "up", "down")
CROP_SCALE = (0.3, 1.0)  # RandomResizedCrop's area fraction (supplement §7)
CROP_RATIO = (0.75, 1.25)  # ... and its aspect ratio w / h
# Why a video was passed over: at start-up (the first two), or when an example asked for frames.
SKIPS = ("unreadable", "too_short", "ends_early", "variable_rate", "corrupt")
# PyAV >= 17 converts to RGB on a thread pool; one is faster (the workers are the parallelism)
TO_RGB = {"format": "rgb24"}
if int(av.__version__.split(".")[0]) >= 17:
    TO_RGB["threads"] = 1

# The white-noise square (§4.4, Fig. 6)


def noise_square_video(n_frames=64, size=512, square_size=None, speed=None, direction="right",
                       seed=0, t=None, offset=0):
    """The stimulus as the authors' demo makes it: (video uint8 [T, 3, H, W], masks bool
    [T, H, W]). At the defaults: 512 x 512 static uniform noise, and a 256 x 256 square of its own
    noise sliding rigidly over it (every frame alone is uniform noise), vertically centred, its
    left edge at frame t of T at t * (W - W//2) // T. size, square_size: an int or (H, W) (None:
    half the frame); a speed moves the square that many pixels per frame from `offset`, clipped
    with its mask where it leaves the frame; seed: an int or a Generator; t: only these frames."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    height, width = (size, size) if isinstance(size, int) else size
    square = (height // 2, width // 2) if square_size is None else square_size
    sh, sw = (square, square) if isinstance(square, int) else square
    rng = np.random.default_rng(seed)  # a Generator passes through unchanged
    background = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
    texture = rng.integers(0, 256, (3, sh, sw), dtype=np.uint8)
    horizontal = direction in ("left", "right")
    room = width - sw if horizontal else height - sh  # how far the square can travel
    t = np.arange(n_frames) if t is None else np.asarray(t)
    if speed is None:
        pos = t * room // n_frames
    else:
        pos = offset + np.floor(speed * t).astype(np.int64)
    if direction in ("left", "up"):
        pos = room - pos
    video = np.repeat(background[None], len(t), axis=0)
    masks = np.zeros((len(t), height, width), dtype=bool)
    for i, p in enumerate(pos):
        y, x = ((height - sh) // 2, p) if horizontal else (p, (width - sw) // 2)  # centred across
        y0, y1 = max(y, 0), min(y + sh, height)  # a fast square may leave the frame
        x0, x1 = max(x, 0), min(x + sw, width)
        if y0 < y1 and x0 < x1:
            video[i, :, y0:y1, x0:x1] = texture[:, y0 - y:y1 - y, x0 - x:x1 - x]
            masks[i, y0:y1, x0:x1] = True
    return torch.from_numpy(video), torch.from_numpy(masks)


# Reading frames: one reader for video files and frame folders, reading only what is asked for


class BadVideo(ValueError):
    """A video file or frame folder that cannot give the frames asked for; `reason` is in SKIPS."""

    def __init__(self, path, reason, message):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = reason


def to_rgb(a):
    """Any 8- or 16-bit image as uint8 H x W x 3: grey repeated, alpha dropped."""
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] > 4):
        raise ValueError(f"not an 8-bit image (an array {a.dtype} {a.shape})")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] <= 2:
        return np.repeat(a[:, :, :1], 3, axis=2)
    return a[:, :, :3]


def image_names(folder):
    """The image files of a frame folder in frame order: natural sort, so frame_2 comes before
    frame_10."""
    names = [f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS)]
    names = [f for f in names if not f.startswith(".")]
    def natural(name):
        return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]

    return sorted(names, key=natural)


def read_frames(path, indices=None, min_side=0):
    """The frames of a video file or a frame folder at `indices` (any order, repeats allowed;
    None: all) as uint8 [len, H, W, 3], decoding only what they need. Any failure is a BadVideo.
    min_side: JPEG frames are decoded at the smallest of 1, 1/2, 1/4, 1/8 of their size whose
    sides stay >= min_side (the decoder scales in its DCT: 2-3x faster at 1/2, less to resize)."""
    path = str(path)
    if os.path.isdir(path):
        frames = _read_images(path, indices, min_side)
    else:
        try:
            frames = _read_video(path, indices)
        except (av.error.FFmpegError, IndexError, OSError, EOFError) as err:
            message = f"not a readable video ({type(err).__name__}: {err})"
            raise BadVideo(path, "corrupt", message) from None
    if not frames:
        raise BadVideo(path, "corrupt", "no frames")
    if len({f.shape for f in frames}) > 1:
        sizes = sorted({f.shape for f in frames})
        raise BadVideo(path, "corrupt", f"frames of different sizes {sizes}")
    return np.stack(frames)


def _read_images(folder, indices, min_side):
    names = image_names(folder)
    if indices is None:
        indices = range(len(names))
    indices = [int(i) for i in indices]
    got = {}
    for i in dict.fromkeys(indices):  # each frame once, in the order asked
        if i >= len(names):
            raise BadVideo(folder, "ends_early", f"{len(names)} frames, frame {i} was asked for")
        path = os.path.join(folder, names[i])
        try:
            if min_side and names[i].lower().endswith((".jpg", ".jpeg")):
                with Image.open(path) as im:
                    im.draft("RGB", (min_side, min_side))
                    if im.mode != "RGB":  # (a copy: 1 ms a 480p frame)
                        im = im.convert("RGB")
                    got[i] = np.asarray(im)
            else:
                got[i] = to_rgb(iio.imread(path))
        except Exception as err:  # noqa: BLE001 -- a corrupt or truncated image file
            raise BadVideo(path, "corrupt", f"not a readable image ({err})") from None
    return [got[i] for i in indices]


def _read_video(path, indices):
    if indices is None:
        with av.open(path) as container:
            return [f.to_ndarray(**TO_RGB) for f in container.decode(video=0)]
    want = sorted({int(i) for i in indices})
    try:
        got = _decode(path, want, by_pts=True)
    except _SeekFailed:
        got = _decode(path, want, by_pts=False)
    return [got[int(i)] for i in indices]


class _SeekFailed(Exception):
    pass


def frame_index(path, stream):
    """A frame's index from its timestamp, i = (pts - start) * time_base * rate; a timestamp off
    that grid, or none, is a variable frame rate: frames cannot be found by their time."""
    rate, time_base = stream.average_rate, stream.time_base
    if not (rate and time_base):
        raise BadVideo(path, "variable_rate", "no frame rate in its header")
    t0 = stream.start_time or 0
    frames_per_tick = float(time_base * rate)  # floats: Fractions cost milliseconds

    def index(pts):
        if pts is None:
            raise BadVideo(path, "variable_rate", "a frame without a timestamp")
        x = (pts - t0) * frames_per_tick
        if abs(x - round(x)) > 0.25:
            raise BadVideo(path, "variable_rate",
                           f"a timestamp off the {float(rate):g} fps grid: a variable frame rate")
        return round(x)

    return index


def _decode(path, want, by_pts):
    """{i: H x W x 3 array} for the sorted frame indices `want` of a video file. by_pts: frames
    named by their timestamps, so that we can seek to the keyframe before want[0], have the
    decoder drop unwanted frames that no frame refers to (1.6-2.3x faster on H.264) and, with no
    B-frames, decode no packet before a keyframe that precedes the next wanted frame (keyframes
    only, as prepared data: just the wanted frames). A seek past want[0] raises _SeekFailed, and
    frames are counted from the start (by_pts=False), as a GIF's, which paint over each other.
    PyAV, not imageio: imageio's close() runs a full gc.collect()."""
    wanted = set(want)
    got = {}
    n = -1  # the index of the last frame out of the decoder
    with av.open(path) as container:
        stream = container.streams.video[0]
        if container.format.name == "gif":
            by_pts = False
        if by_pts:
            index = frame_index(path, stream)
            if want[0] > 0:  # to a keyframe at or before it
                rate, time_base = stream.average_rate, stream.time_base
                container.seek(int((stream.start_time or 0) + want[0] / (time_base * rate)),
                               stream=stream)
        reordered = not by_pts  # B-frames: decode all
        pending = []  # packets not decoded: no wanted frame has needed them yet
        for packet in container.demux(stream):
            if by_pts and packet.size:
                reordered = reordered or packet.pts != packet.dts
                if packet.is_keyframe and not reordered:
                    pending = []  # decoding can start afresh here
                if index(packet.pts) not in wanted and not reordered:
                    pending.append(packet)
                    continue
            for p in [*pending, packet]:
                if by_pts and p.size:
                    needed = index(p.pts) in wanted
                    stream.codec_context.skip_frame = "DEFAULT" if needed else "NONREF"
                for frame in p.decode():
                    i = n + 1
                    if by_pts:
                        i = index(frame.pts)
                    if i <= n or (n < 0 and i > want[0]):  # out of order, or the seek overshot
                        raise _SeekFailed
                    n = i
                    if i in wanted:
                        got[i] = frame.to_ndarray(**TO_RGB)
                    if i >= want[-1]:
                        return got
            pending = []
    raise BadVideo(path, "ends_early", f"the video ends before frame {want[-1]}")


def count_frames(path):
    """Frames in a video file or frame folder; a video whose first frame does not decode is a
    BadVideo."""
    if os.path.isdir(path):
        return len(image_names(path))
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            next(container.decode(stream))  # a header that is fine with data that is not fails here
            n = stream.frames
        if n <= 0:  # no count in the header (webm, mkv): count packets, which needs no decoding
            with av.open(path) as container:
                n = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    except (av.error.FFmpegError, IndexError, OSError, StopIteration) as err:
        message = f"not a readable video ({type(err).__name__}: {err})"
        raise BadVideo(path, "unreadable", message) from None
    return n


def list_videos(folder):
    """The paths of every video file and frame folder below `folder`, hidden ones left out."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):  # often symlinked in
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if image_names(dirpath):
            paths.append(dirpath)
        for name in filenames:
            if name.lower().endswith(VIDEO_EXTS) and not name.startswith("."):
                paths.append(os.path.join(dirpath, name))
    return sorted(paths)


def index_folder(folder):
    """Every video below `folder`: a sorted list of (path, n_frames, error or None). Video files
    are opened once, their counts cached by (size, mtime) in <folder>/.rvm_index.json (CACHE_DIR
    if read-only): a restart over a million videos opens only new and changed ones."""
    writable = os.access(folder, os.W_OK) and os.stat(folder).st_mode & 0o222  # root honours r-x
    cache = os.path.join(folder, INDEX_NAME)
    if not writable:
        key = hashlib.sha1(os.path.abspath(folder).encode()).hexdigest()[:16]
        cache = os.path.join(CACHE_DIR, f"index-{key}.json")
    try:
        with open(cache) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = {}
    frame_dirs, stamps = [], {}
    for path in list_videos(folder):
        if os.path.isdir(path):
            frame_dirs.append((path, len(image_names(path)), None))
        else:
            st = os.stat(path)
            stamps[os.path.relpath(path, folder)] = [st.st_size, st.st_mtime_ns]
    videos = {}
    for rel, stamp in stamps.items():  # unchanged since the index was written: trusted
        if isinstance(cached.get(rel), list) and cached[rel][:2] == stamp:
            videos[rel] = cached[rel]
    todo = [rel for rel in stamps if rel not in videos]
    for rel in tqdm(todo, desc=f"indexing {folder}", disable=not todo):
        try:
            videos[rel] = stamps[rel] + [count_frames(os.path.join(folder, rel)), None]
        except Exception as err:  # noqa: BLE001 -- whatever a broken file throws
            videos[rel] = stamps[rel] + [0, f"{type(err).__name__}: {err}"]
    if videos != cached:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            with open(f"{cache}.tmp{os.getpid()}", "w") as f:
                json.dump(videos, f)
            os.replace(f"{cache}.tmp{os.getpid()}", cache)  # atomic: ranks indexing at once
        except OSError as err:
            print(f"rvm data: could not write the frame index {cache}: {err}", file=sys.stderr)
    files = [(os.path.join(folder, rel), v[2], v[3]) for rel, v in videos.items()]
    return sorted(frame_dirs + files)


# Sampling clips and augmenting them (supplement §7)


def sample_clips(rng, n_frames, repeats=1, n_source=4, n_target=4, gap_min=4, gap_max=48,
                 window=64):
    """`repeats` clips (frame_idx int64 [n_source + n_target], deltas int64 [n_target]) of one
    window of L = min(window, n_frames) frames by the module docstring's rule, gaps ~
    U{gap_min..min(gap_max, L - n_source)}. With repeats > 1, each starts anywhere in the window
    that leaves room for those gaps."""
    length = min(window, n_frames)
    gap_hi = min(gap_max, length - n_source)
    if gap_hi < gap_min:
        raise ValueError(f"a video of {n_frames} frames is too short (< {n_source + gap_min})")
    window_start = rng.integers(0, n_frames - length + 1)
    clips = []
    for _ in range(repeats):
        start = window_start
        if repeats > 1:
            start = start + rng.integers(0, length - n_source - gap_hi + 1)
        deltas = (n_source - 1) + rng.integers(gap_min, gap_hi + 1, size=n_target)
        clips.append((start + np.concatenate([np.arange(n_source), deltas]), deltas))
    return clips


def random_resized_crop_box(rng, height, width, scale=CROP_SCALE, ratio=CROP_RATIO):
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws it, from a numpy
    generator: up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect ratio
    w / h, else the largest centred box within."""
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(area * aspect)))
        h = int(round(math.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # torchvision's three cases in one: too wide is cut to max(ratio), too tall to min(ratio),
    # else the whole frame
    w = min(width, int(round(height * max(ratio))))
    h = min(height, int(round(width / min(ratio))))
    return (height - h) // 2, (width - w) // 2, h, w


def augment(clip, rng, size, flip_p=0.5, scale=CROP_SCALE, ratio=CROP_RATIO,
            per_frame_crop=False):
    """uint8 [T, 3, H, W] -> uint8 [T, 3, size, size]: a flip of the whole clip, then
    RandomResizedCrop, bicubic and antialiased as torchvision's, on uint8 frames channels last:
    fixed point as PIL's, 10x faster than on floats, within a grey level of them."""
    flip = rng.random() < flip_p  # video-level: every frame or none (supplement §7)
    H, W = clip.shape[-2:]
    clip = clip.contiguous(memory_format=torch.channels_last)
    groups = [clip]
    if per_frame_crop:
        groups = clip.split(1)
    out = []
    for frames in groups:
        top, left, h, w = random_resized_crop_box(rng, H, W, scale, ratio)
        crop = frames[:, :, top:top + h, left:left + w]
        out.append(F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True))
    out = torch.cat(out).contiguous()
    if flip:
        out = out.flip(-1)
    return out


# The dataset


class ClipDataset(torch.utils.data.IterableDataset):
    """An endless, seeded stream of training examples; example k is `self.example(k)`, a dict:
        'source' uint8 [n_source, 3, S, S]   'target' uint8 [n_target, 3, S, S]
        'deltas' int64 [n_target]   'frame_idx' int64 [n_source + n_target] (in the video)
        'index' (= k)   'skipped' int64 [len(SKIPS)]: draws passed over, by reason
    and, when every corpus is the noise square (the authors' stimulus at S x S, T = window), its
    ground truth 'source_mask' and 'target_mask' bool [., S, S]."""

    def __init__(self, corpora, *, image_size=256, n_source=4, n_target=4, gap_min=4, gap_max=48,
                 window=64, per_frame_crop=False, flip_p=0.5, repeated_sampling=1, seed=0,
                 stream=0, start=0):
        super().__init__()
        if min(n_source, n_target, repeated_sampling, gap_min) < 1 or gap_min > gap_max:
            raise ValueError("need n_source, n_target, repeated_sampling >= 1, 1 <= gap_min <= "
                             f"gap_max: {n_source}, {n_target}, {repeated_sampling}, {gap_min}, "
                             f"{gap_max}")
        if n_source - 1 + gap_max >= window:
            raise ValueError(f"gap_max={gap_max} after n_source={n_source} frames leaves the "
                             f"window={window}")
        self.clip = dict(n_source=n_source, n_target=n_target, gap_min=gap_min, gap_max=gap_max,
                         window=window)
        self.image_size = image_size
        self.augmentation = dict(flip_p=flip_p, per_frame_crop=per_frame_crop)
        self.repeated_sampling = repeated_sampling
        self.seed = seed
        self.stream = stream
        self.start = start
        self.batch_size = None  # None: yield examples; make_loader's copy yields whole batches
        self.skipped = Counter()  # videos (at start-up), then draws passed over, by reason
        self._warned = set()
        self._group = (None, None)  # ((seed, stream, group), its examples): the last made
        if isinstance(corpora, str):
            corpora = [corpora]
        specs = [(c, 1.0) if isinstance(c, str) else c for c in corpora]
        weights = np.array([w for _, w in specs], dtype=np.float64)
        if len(specs) == 0 or (weights <= 0).any():
            raise ValueError(f"need a spec or a list of (spec, weight > 0), got {corpora!r}")
        self.weights = weights / weights.sum()
        self.corpora = [self._open(spec) for spec, _ in specs]
        # only when every corpus is the noise square can every example carry its masks
        self.with_masks = all(c["type"] == "noise" for c in self.corpora)

    def _skip(self, path, message, reason):
        self.skipped[reason] += 1
        if path not in self._warned:  # one line per file, however often it is drawn
            self._warned.add(path)
            print(f"rvm data: skipping {path}: {message} ({reason})", file=sys.stderr)

    def _open(self, spec):
        """A folder, or 'noise_square[:square=A-B,speed=A-B,direction=D|D]' whose ranges are drawn
        per example. square: side in pixels (default half the frame); speed: pixels per frame
        (default: the authors' formula); direction: right, left, up, down, '|' between several,
        or any (default right)."""
        name, _, options = spec.partition(":")
        if name == "noise_square":
            return self._open_noise_square(spec, options)
        folder = os.path.expanduser(spec)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such folder: {folder} (a folder of videos or frame "
                                    "folders, 'noise_square', or [(spec, weight), ...])")
        videos = []
        entries = index_folder(folder)
        shortest = self.clip["n_source"] + self.clip["gap_min"]
        for path, n, error in entries:
            if error:
                self._skip(path, error, "unreadable")
            elif n < shortest:
                self._skip(path, f"too short ({n} frames < {shortest})", "too_short")
            else:
                videos.append((path, n))
        if not videos:
            raise ValueError(f"no usable video in {folder}: {len(entries)} found (files "
                             f"{' '.join(VIDEO_EXTS)}, frame folders), none readable, long enough")
        skipped = len(entries) - len(videos)
        print(f"rvm data: {folder}: {len(videos)} videos, {skipped} skipped", file=sys.stderr)
        return {"type": "folder", "videos": videos}

    def _open_noise_square(self, spec, options):
        corpus = {"type": "noise", "square": None, "speed": None, "direction": ("right",)}
        for item in filter(None, options.split(",")):
            key, _, value = item.partition("=")
            lo, _, hi = value.partition("-")
            if key not in ("square", "speed", "direction"):
                raise ValueError(f"{spec}: unknown option {key!r} (square, speed, direction)")
            try:
                if key == "direction" and value == "any":
                    corpus[key] = DIRECTIONS
                elif key == "direction":
                    corpus[key] = tuple(value.split("|"))
                elif key == "square":
                    corpus[key] = (int(lo), int(hi or lo))
                else:
                    corpus[key] = (float(lo), float(hi or lo))
                if not set(corpus["direction"]) <= set(DIRECTIONS):
                    raise ValueError
            except ValueError:
                raise ValueError(f"{spec}: bad value {value!r} for {key} (square=N|A-B, "
                                 f"speed=V|A-B, direction=D|D, D in {DIRECTIONS} or any)") from None
        square = corpus["square"]
        if square and not 1 <= square[0] <= square[1] <= self.image_size:
            raise ValueError(f"{spec}: the square must fit in the {self.image_size} px frame")
        return corpus

    def example(self, k):
        """Example k of this stream, a pure function of (seed, stream, k); the R examples of group
        k // R are made together."""
        group = k // self.repeated_sampling
        if self._group[0] != (self.seed, self.stream, group):
            self._group = ((self.seed, self.stream, group), self._make_group(group))
        return {**self._group[1][k % self.repeated_sampling], "index": torch.tensor(k)}

    def _make_group(self, group):
        """R clips of one window of a video, decoded once (or R noise-square stimuli). A video that
        fails is passed over, the group drawn again, and counted on its first example."""
        skipped = torch.zeros(len(SKIPS), dtype=torch.int64)
        for attempt in range(100):
            rng = np.random.default_rng([self.seed, self.stream, group, attempt])
            corpus = self.corpora[rng.choice(len(self.corpora), p=self.weights)]
            if corpus["type"] == "noise":
                examples = [self._noise_example(rng, corpus) for _ in range(self.repeated_sampling)]
            else:
                path, n = corpus["videos"][rng.integers(len(corpus["videos"]))]
                try:
                    examples = self._video_examples(rng, path, n)
                except BadVideo as err:
                    self._skip(path, str(err).removeprefix(f"{err.path}: "), err.reason)
                    skipped[SKIPS.index(err.reason)] += 1
                    continue
            examples[0]["skipped"] = skipped
            return examples
        raise RuntimeError(f"100 videos in a row failed for the examples of group {group}; "
                           "see the warnings above")

    def _video_examples(self, rng, path, n):
        clips = sample_clips(rng, n, self.repeated_sampling, **self.clip)
        wanted = np.unique(np.concatenate([frame_idx for frame_idx, _ in clips]))
        # a crop of a frame decoded at a reduced size is still >= image_size
        frames = read_frames(path, wanted, min_side=2 * self.image_size)
        examples = []
        for frame_idx, deltas in clips:
            clip = frames[np.searchsorted(wanted, frame_idx)]
            clip = torch.from_numpy(clip).permute(0, 3, 1, 2)  # [T, 3, H, W], channels last
            clip = augment(clip, rng, self.image_size, **self.augmentation)
            examples.append(self._pack(clip, frame_idx, deltas))
        return examples

    def _noise_example(self, rng, corpus):
        """A fresh stimulus, no flip or crop: a crop would blur the noise, and direction covers
        the flip. A square with a speed starts where it stays in the frame."""
        size, window = self.image_size, self.clip["window"]
        frame_idx, deltas = sample_clips(rng, window, 1, **self.clip)[0]
        lo, hi = corpus["square"] or (size // 2, size // 2)  # default: half the frame, as theirs
        side = int(rng.integers(lo, hi + 1))
        speed = None
        if corpus["speed"] is not None:
            speed = float(rng.uniform(*corpus["speed"]))
        direction = corpus["direction"][rng.integers(len(corpus["direction"]))]
        offset = 0
        if speed is not None:
            room = size - side - math.floor(speed * (window - 1))
            offset = int(rng.integers(0, max(0, room) + 1))
        clip, masks = noise_square_video(window, size, side, speed, direction, rng, frame_idx,
                                         offset)
        return self._pack(clip, frame_idx, deltas, masks)

    def _pack(self, clip, frame_idx, deltas, masks=None):
        n_source = self.clip["n_source"]
        example = {"source": clip[:n_source], "target": clip[n_source:],
                   "deltas": torch.from_numpy(deltas), "frame_idx": torch.from_numpy(frame_idx),
                   "skipped": torch.zeros(len(SKIPS), dtype=torch.int64)}
        if self.with_masks:
            example["source_mask"] = masks[:n_source]
            example["target_mask"] = masks[n_source:]
        return example

    def __iter__(self):
        """Worker w of n makes examples (batches of B on make_loader's copy) w, w + n, ... from
        start on; the DataLoader takes them from the workers in turn: they come out in order."""
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        B = self.batch_size or 1
        for b in itertools.count(worker, n_workers):
            first = self.start + b * B
            examples = [self.example(k) for k in range(first, first + B)]
            if self.batch_size is None:
                yield examples[0]
                continue
            # numpy's stack: torch's would fan out to intra-op threads, all waiting on a busy CPU
            yield {key: torch.from_numpy(np.stack([ex[key].numpy() for ex in examples]))
                   for key in examples[0]}


def make_loader(dataset, batch_size, num_workers=0):
    """A DataLoader of batched clips (uint8 [B, T, 3, S, S]) from example dataset.start on, in
    index order for any num_workers (a DataLoader over the ClipDataset would interleave them).
    Workers need no seeding: each example seeds its own generator."""
    batches = copy.copy(dataset)  # the same stream, made in whole batches
    batches.batch_size = batch_size
    return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available())


# Prepared data: python data.py --src=VIDEOS --dst=PREPARED


def frames_in_order(path):
    """Every frame of a video file or frame folder, in order, uint8 H x W x 3. A variable frame
    rate, or fewer frames than the header counts, is a BadVideo; GIFs are counted."""
    if os.path.isdir(path):
        for i in range(len(image_names(path))):
            yield read_frames(path, [i])[0]
        return
    with av.open(path) as container:
        stream = container.streams.video[0]
        check = container.format.name != "gif"
        if check:
            index = frame_index(path, stream)
        n = 0
        for frame in container.decode(stream):
            if check and index(frame.pts) != n:
                raise BadVideo(path, "variable_rate", f"frame {n} has the timestamp of another")
            yield frame.to_ndarray(**TO_RGB)
            n += 1
        if n < stream.frames:
            raise BadVideo(path, "ends_early", f"ends after {n} of its {stream.frames} frames")


def prepare_video(job):
    """A video file or frame folder -> an H.264 file of keyframes only (every frame decodes on
    its own: an example decodes its frames and no other), the short side resized to short_side
    (bicubic, never enlarged); written under a hidden name, renamed once whole. -> (src, None)
    or (src, why it was skipped)."""
    src, dst, short_side, crf = job
    partial = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.partial")
    rate = 30  # a frame folder's: frames are counted, not timed
    try:
        if not os.path.isdir(src):
            with av.open(src) as container:
                rate = container.streams.video[0].average_rate or rate
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with av.open(partial, "w", format="mp4") as out:
            stream = None
            for frame in frames_in_order(src):
                if stream is None:
                    height, width = frame.shape[:2]
                    scale = min(1.0, short_side / min(height, width))
                    stream = out.add_stream("libx264", rate=rate)
                    stream.height = max(2, round(height * scale / 2) * 2)  # yuv420p: even sides
                    stream.width = max(2, round(width * scale / 2) * 2)
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.gop_size = 1  # keyframes only
                    # fastdecode (no CABAC, no deblocking): 1.7x faster to decode, 10 % larger
                    stream.codec_context.options = {"crf": str(crf), "tune": "fastdecode"}
                    stream.thread_count = 1  # one process per core does the rest
                image = av.VideoFrame.from_ndarray(frame, format="rgb24")
                image = image.reformat(width=stream.width, height=stream.height, format="yuv420p",
                                       interpolation="BICUBIC")
                out.mux(stream.encode(image))
            if stream is None:
                raise BadVideo(src, "corrupt", "no frames")
            out.mux(stream.encode())
        os.replace(partial, dst)
        return src, None
    except Exception as err:  # noqa: BLE001 -- whatever a broken file throws: named, skipped
        if os.path.exists(partial):
            os.remove(partial)
        if isinstance(err, BadVideo):
            return src, f"{str(err).removeprefix(f'{src}: ')} ({err.reason})"
        return src, f"not a readable video ({type(err).__name__}: {err}) (corrupt)"


def prepare(src, dst, short_side=256, crf=23, workers=None):
    """Every video and frame folder below src, prepared into its place below dst (a/b/ and
    a/b.webm become a/b.mp4), on every core; what is done is left as it is. -> (how many are
    prepared, [(input, why it was skipped)])."""
    src = os.path.realpath(src)
    dst = os.path.realpath(dst)
    if dst == src or dst.startswith(src + os.sep):
        raise ValueError(f"--dst={dst} is --src or inside it: it would be read as more videos")
    if not os.path.isdir(src):
        raise FileNotFoundError(f"--src={src}: no such folder")
    jobs = []
    skipped = []
    outputs = {}
    for path in list_videos(src):
        out = os.path.join(dst, os.path.splitext(os.path.relpath(path, src))[0] + ".mp4")
        if os.path.isdir(path):
            out = os.path.join(dst, os.path.relpath(path, src) + ".mp4")
        if out in outputs:  # a/b/ and a/b.mp4
            skipped.append((path, f"{outputs[out]} has its name"))
            continue
        outputs[out] = path
        if not os.path.exists(out):
            jobs.append((path, out, short_side, crf))
    done = len(outputs) - len(jobs)
    print(f"{len(outputs)} videos in {src}: {done} prepared already, {len(jobs)} to prepare")
    with multiprocessing.Pool(workers or os.cpu_count()) as pool:
        results = pool.imap_unordered(prepare_video, jobs)
        for path, error in tqdm(results, total=len(jobs), desc="preparing", unit="video"):
            if error:
                tqdm.write(f"rvm data: skipping {path}: {error}")
                skipped.append((path, error))
            else:
                done += 1
    return done, skipped


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A folder of videos and frame folders, copied in "
                                     "the form read fastest, for train.py's --data and --val_data "
                                     "(prepare_video). Settings are written --name=value.")
    parser.add_argument("--src", required=True, help="a folder of videos and frame folders")
    parser.add_argument("--dst", required=True, help="where the copy goes (not inside src)")
    parser.add_argument("--short_side", type=int, default=256, help="frames resized to this "
                        "short side (never enlarged); at least train.py's image_size")
    parser.add_argument("--crf", type=int, default=23, help="x264's quality: lower is better")
    parser.add_argument("--workers", type=int, help="processes (default: one per core)")
    args = parser.parse_args()
    try:
        n_done, failed = prepare(args.src, args.dst, args.short_side, args.crf, args.workers)
    except (ValueError, OSError) as err:
        sys.exit(f"data.py: {err}")
    for path, why in failed:
        print(f"  skipped {path}: {why}")
    print(f"{n_done} videos prepared in {os.path.realpath(args.dst)}, {len(failed)} skipped")
    sys.exit(0 if n_done else 1)
