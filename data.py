"""Training clips for RVM: videos, frame folders or the white-noise square in, uint8 clips out.

The sampling rule (§4.1, supplement §7). An example is a window of `window` = 64 frames of a video:

    frames  s, s+1, s+2, s+3                  the 4 consecutive source frames
    frames  s+3+g_1, ..., s+3+g_4             4 targets, each gap g_j ~ U{4..48} drawn independently
    deltas  Δ_j = 3 + g_j                     counted from the FIRST source frame (the authors' way)

with the window's start s uniform over the video. A video shorter than the window is used whole
and its gaps are limited to what exists. The whole clip is then flipped with p = 0.5 and cropped
with RandomResizedCrop (scale 0.3-1, ratio 0.75-1.25, bicubic) to 256 x 256. The paper says
"frame-level" crop; we draw one box per clip, so that the motion between frames stays what it
was, and `per_frame_crop=True` draws one per frame.

Sources: a folder (every video file below it, and every folder of jpg/png frames, one video
each), 'noise_square' (the stimulus of §4.4, made on the fly), or a weighted mixture of them
[(spec, weight), ...] such as the paper's (supplement Table 4). Bad files are skipped with one
warning each and counted; they never stop training.

Determinism: example k of stream r is a pure function of (seed, r, k) -- every random draw comes
from np.random.default_rng([seed, r, k, attempt]) -- so the number of loader workers changes
nothing and a run resumes exactly by starting the stream at the example it had reached.
Clips stay uint8 until the device: x = batch['source'].to(device).float() / 255.
"""

import copy
import hashlib
import itertools
import json
import math
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
CACHE_DIR = os.environ.get("RVM_CACHE_DIR", os.path.expanduser("~/.cache/rvm"))  # ... or here, if read-only
DIRECTIONS = ("right", "left", "up", "down")
# PyAV >= 17 converts frames to RGB on a thread pool; one thread is faster (the loader's workers are the parallelism)
TO_RGB = {"format": "rgb24", "threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {"format": "rgb24"}

# -----------------------------------------------------------------------------
# The white-noise square (§4.4, Fig. 6)


def noise_square_video(n_frames=64, size=512, square_size=None, speed=None, direction="right", seed=0, t=None,
                       offset=0):
    """The stimulus as the authors' demo makes it: (video uint8 [T, 3, H, W], masks bool [T, H, W]). At the
    defaults: 512 x 512 uniform noise, static, and a 256 x 256 square of its own noise sliding rigidly over it
    (so every frame alone is uniform noise), vertically centred, its left edge at frame t of T at
    t * (W - W//2) // T. size, square_size: an int or (H, W) (None: half the frame). speed None follows that
    formula; a number moves the square that many pixels per frame from `offset`, clipped with its mask where
    it leaves the frame. seed: an int or a numpy Generator; t: only these frames (default all T)."""
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
    pos = t * room // n_frames if speed is None else offset + np.floor(speed * t).astype(np.int64)
    if direction in ("left", "up"):
        pos = room - pos
    video = np.repeat(background[None], len(t), axis=0)
    masks = np.zeros((len(t), height, width), dtype=bool)
    for i, p in enumerate(pos):
        y, x = ((height - sh) // 2, p) if horizontal else (p, (width - sw) // 2)  # centred across the motion
        y0, y1, x0, x1 = max(y, 0), min(y + sh, height), max(x, 0), min(x + sw, width)  # a fast one may leave
        if y0 < y1 and x0 < x1:
            video[i, :, y0:y1, x0:x1] = texture[:, y0 - y:y1 - y, x0 - x:x1 - x]
            masks[i, y0:y1, x0:x1] = True
    return torch.from_numpy(video), torch.from_numpy(masks)


# -----------------------------------------------------------------------------
# Reading frames: one reader for video files and frame folders, reading only what it is asked for


def to_rgb(a):
    """Any 8- or 16-bit image as uint8 H x W x 3: grey repeated, alpha dropped."""
    a = (a >> 8).astype(np.uint8) if a.dtype == np.uint16 else a
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] > 4):
        raise ValueError(f"not an 8-bit image (an array {a.dtype} {a.shape})")
    a = a[:, :, None] if a.ndim == 2 else a
    return np.repeat(a[:, :, :1], 3, axis=2) if a.shape[2] <= 2 else a[:, :, :3]


def image_names(folder):
    """The image files of a frame folder in frame order: natural sort, so frame_2 comes before frame_10."""
    names = (f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))
    return sorted(names, key=lambda n: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", n)])


def read_frames(path, indices=None, min_side=0):
    """The frames of a video file or a frame folder at `indices` (any order, repeats allowed; None:
    every frame) as uint8 [len, H, W, 3]. A video is decoded only as far as the last frame asked
    for; a folder's other files are not opened. Any failure is a ValueError naming the file.
    min_side: JPEG frames are decoded at the smallest of 1, 1/2, 1/4, 1/8 of their size whose sides
    stay >= min_side (the decoder scales in its DCT: 2-3x faster at 1/2, and less left to resize)."""
    path = str(path)
    if os.path.isdir(path):
        names = image_names(path)
        indices = range(len(names)) if indices is None else [int(i) for i in indices]
        got = {}
        for i in dict.fromkeys(indices):  # each frame once, in the order asked
            if i >= len(names):
                raise ValueError(f"{path}: {len(names)} frames, frame {i} was asked for")
            try:
                if min_side and names[i].lower().endswith((".jpg", ".jpeg")):
                    with Image.open(os.path.join(path, names[i])) as im:
                        im.draft("RGB", (min_side, min_side))
                        got[i] = np.asarray(im.convert("RGB"))
                else:
                    got[i] = to_rgb(iio.imread(os.path.join(path, names[i])))
            except Exception as err:  # noqa: BLE001 -- a corrupt or truncated image file
                raise ValueError(f"{os.path.join(path, names[i])}: not a readable image ({err})") from None
        frames = [got[i] for i in indices]
    else:
        try:
            if indices is None:
                with av.open(path) as container:
                    frames = [f.to_ndarray(**TO_RGB) for f in container.decode(video=0)]
            else:
                want = sorted({int(i) for i in indices})
                try:
                    got = _decode(path, want, by_pts=True)
                except _NotConstantRate:
                    got = _decode(path, want, by_pts=False)
                frames = [got[int(i)] for i in indices]
        except (av.error.FFmpegError, IndexError, OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable video ({type(err).__name__}: {err})") from None
    if not frames:
        raise ValueError(f"{path}: no frames")
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"{path}: frames of different sizes {sorted({f.shape for f in frames})}")
    return np.stack(frames)


class _NotConstantRate(Exception):
    pass


def _decode(path, want, by_pts):
    """{i: H x W x 3 array} for the sorted frame indices `want` of a video file. by_pts=True names each frame
    by its timestamp, i = (pts - start) * time_base * rate, so that we can seek to the keyframe before the first
    wanted frame and have the decoder drop unwanted frames no other frame refers to (1.6-2.3x faster on H.264).
    A timestamp off that grid (variable frame rate, a wrong rate in the header, a seek that overshot) raises
    _NotConstantRate: the caller then counts frames from the start (by_pts=False). PyAV, not imageio: its
    plugin only hands out converted arrays, and its close() runs a full gc.collect()."""
    wanted, got, n = set(want), {}, -1  # n: index of the last frame out of the decoder
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate, time_base, t0 = stream.average_rate, stream.time_base, stream.start_time or 0
        if by_pts and not (rate and time_base and container.format.name != "gif"):
            raise _NotConstantRate  # gif frames paint over the previous one: nothing to seek to or drop

        def index(pts):  # the frame a timestamp names, if it lies on the grid
            if pts is None or abs((x := (pts - t0) * time_base * rate) - round(x)) > 0.25:
                raise _NotConstantRate
            return round(x)

        if by_pts and want[0] > 0:
            container.seek(int(t0 + want[0] / (time_base * rate)), stream=stream)  # a keyframe at or before
        for packet in container.demux(stream):
            if by_pts and packet.size:
                stream.codec_context.skip_frame = "DEFAULT" if index(packet.pts) in wanted else "NONREF"
            for frame in packet.decode():
                i = index(frame.pts) if by_pts else n + 1
                if i <= n or (n < 0 and i > want[0]):  # out of order, or the seek went past the first
                    raise _NotConstantRate
                n = i
                if i in wanted:
                    got[i] = frame.to_ndarray(**TO_RGB)
                if i >= want[-1]:
                    return got
    if by_pts:
        raise _NotConstantRate  # it ran out early: count the frames one by one to be sure
    raise EOFError(f"the video ends after {n + 1} frames, frame {want[-1]} was asked for")


def count_frames(path):
    """Frames in a video file or frame folder; a video whose first frame does not decode is a ValueError."""
    if os.path.isdir(path):
        return len(image_names(path))
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            next(container.decode(stream))  # a file whose header is fine but whose data is not fails here
            n = stream.frames
        if n <= 0:  # no count in the header (webm, mkv): count packets, which needs no decoding
            with av.open(path) as container:
                n = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
    except (av.error.FFmpegError, IndexError, OSError, StopIteration) as err:
        raise ValueError(f"{path}: not a readable video ({type(err).__name__}: {err})") from None
    return n


def index_folder(folder):
    """Every video below `folder`: a sorted list of (path, n_frames, error or None). Frame folders are counted
    while listing; video files are opened once, their counts cached by (size, mtime) in <folder>/.rvm_index.json,
    or in CACHE_DIR if the folder is read-only: a restart over a million videos opens only new and changed ones."""
    writable = os.access(folder, os.W_OK) and os.stat(folder).st_mode & 0o222  # root honours r-x too
    cache = (os.path.join(folder, INDEX_NAME) if writable else
             os.path.join(CACHE_DIR, f"index-{hashlib.sha1(os.path.abspath(folder).encode()).hexdigest()[:16]}.json"))
    try:
        with open(cache) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = {}
    frame_dirs, stamps = [], {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):  # datasets are often symlinked in
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(f.lower().endswith(IMAGE_EXTS) and not f.startswith(".") for f in filenames):
            frame_dirs.append((dirpath, len(image_names(dirpath)), None))
        for name in filenames:
            if name.lower().endswith(VIDEO_EXTS) and not name.startswith("."):
                st = os.stat(os.path.join(dirpath, name))
                stamps[os.path.relpath(os.path.join(dirpath, name), folder)] = [st.st_size, st.st_mtime_ns]
    videos = {rel: v for rel, stamp in stamps.items() if isinstance(v := cached.get(rel), list) and v[:2] == stamp}
    todo = [rel for rel in stamps if rel not in videos]  # new or changed since the index was written
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
            os.replace(f"{cache}.tmp{os.getpid()}", cache)  # atomic: ranks indexing at once do not clash
        except OSError as err:
            print(f"rvm data: could not write the frame index {cache}: {err}", file=sys.stderr)
    return sorted(frame_dirs + [(os.path.join(folder, rel), v[2], v[3]) for rel, v in videos.items()])


# -----------------------------------------------------------------------------
# Sampling a clip and augmenting it (supplement §7)


def sample_clip(rng, n_frames, n_source=4, n_target=4, gap_min=4, gap_max=48, window=64):
    """(frame_idx int64 [n_source + n_target], deltas int64 [n_target]) for one clip of a video: the rule of the
    module docstring, with gaps ~ U{gap_min..min(gap_max, L - n_source)} in a window of L = min(window, n_frames)."""
    length = min(window, n_frames)
    gap_hi = min(gap_max, length - n_source)
    if gap_hi < gap_min:
        raise ValueError(f"a video of {n_frames} frames is too short (< {n_source + gap_min})")
    start = rng.integers(0, n_frames - length + 1)
    deltas = (n_source - 1) + rng.integers(gap_min, gap_hi + 1, size=n_target)
    return start + np.concatenate([np.arange(n_source), deltas]), deltas


def random_resized_crop_box(rng, height, width, scale=(0.3, 1.0), ratio=(0.75, 1.25)):
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws it, from a numpy generator: up to 10
    tries of an area fraction ~ U(scale) and a log-uniform aspect ratio w/h, else the largest centred box within."""
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # torchvision's three cases in one: too wide is cut to max(ratio), too tall to min(ratio), else the whole frame
    w, h = min(width, int(round(height * max(ratio)))), min(height, int(round(width / min(ratio))))
    return (height - h) // 2, (width - w) // 2, h, w


def augment(clip, rng, size, flip_p=0.5, scale=(0.3, 1.0), ratio=(0.75, 1.25), per_frame_crop=False):
    """uint8 [T, 3, H, W] -> uint8 [T, 3, size, size]: a flip of the whole clip, then RandomResizedCrop
    (bicubic, antialiased, as torchvision and PIL)."""
    flip = rng.random() < flip_p  # video-level: every frame or none (supplement §7)
    H, W = clip.shape[-2:]
    boxes = [random_resized_crop_box(rng, H, W, scale, ratio) for _ in range(len(clip) if per_frame_crop else 1)]
    out = torch.cat([F.interpolate(frames[:, :, t:t + h, l:l + w].float(), size=(size, size), mode="bicubic",
                                   align_corners=False, antialias=True)
                     for frames, (t, l, h, w) in zip(clip.split(1) if per_frame_crop else [clip], boxes, strict=True)])
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.flip(-1) if flip else out


# -----------------------------------------------------------------------------
# The dataset


class ClipDataset(torch.utils.data.IterableDataset):
    """An endless, seeded stream of training examples; example k is `self.example(k)`, a dict:
        'source' uint8 [n_source, 3, S, S]   'target' uint8 [n_target, 3, S, S]   'deltas' int64 [n_target]
        'frame_idx' int64 [n_source + n_target] (in the video)   'index' (= k)   'skipped' (bad draws retried)
    and, when every source is the noise square, its ground truth 'source_mask' and 'target_mask'
    bool [., S, S]. At image_size S, a noise clip is the authors' stimulus at S x S with T = window."""

    def __init__(self, sources, *, image_size=256, n_source=4, n_target=4, gap_min=4, gap_max=48, window=64,
                 per_frame_crop=False, flip_p=0.5, crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.25),
                 seed=0, stream=0, start=0):
        super().__init__()
        if not (1 <= gap_min <= gap_max and min(n_source, n_target) >= 1 and n_source - 1 + gap_max < window):
            raise ValueError(f"need 1 <= gap_min <= gap_max, n_source, n_target >= 1 and n_source - 1 + gap_max < "
                             f"window, every target inside the clip's window (got gap_min={gap_min}, gap_max="
                             f"{gap_max}, n_source={n_source}, n_target={n_target}, window={window})")
        self.n_source, self.n_target, self.gap_min, self.gap_max = n_source, n_target, gap_min, gap_max
        self.window, self.image_size, self.seed, self.stream, self.start = window, image_size, seed, stream, start
        self.aug = {"flip_p": flip_p, "scale": crop_scale, "ratio": crop_ratio, "per_frame_crop": per_frame_crop}
        self.batch_size = None  # None: yield examples; make_loader's copy yields whole batches
        self.skipped, self._warned = Counter(), set()  # skipped: 'unreadable', 'too_short' (start-up), 'decode'
        specs = [(s, 1.0) if isinstance(s, str) else s for s in ([sources] if isinstance(sources, str) else sources)]
        weights = np.array([w for _, w in specs], dtype=np.float64)
        if len(specs) == 0 or (weights <= 0).any():
            raise ValueError(f"sources must be a spec or a list of (spec, weight > 0), got {sources!r}")
        self.weights = weights / weights.sum()
        self.sources = [self._open(spec) for spec, _ in specs]
        self.masks = all(s["type"] == "noise" for s in self.sources)  # only then can every example carry masks

    @property
    def n_skipped(self):
        return sum(self.skipped.values())

    def _skip(self, path, reason, category):
        self.skipped[category] += 1
        if path not in self._warned:  # one line per file, however often it is drawn
            self._warned.add(path)
            print(f"rvm data: skipping {path}: {reason} ({self.n_skipped} skipped so far)", file=sys.stderr)

    def _open(self, spec):
        """A folder, or 'noise_square[:square=A-B,speed=A-B,direction=D|D]' whose ranges are drawn per example.
        square: side in pixels (default half the frame); speed: pixels per frame (default: the authors'
        formula); direction: right, left, up, down, '|' between several, or any (default right)."""
        if spec.partition(":")[0] == "noise_square":
            source = {"type": "noise", "square": None, "speed": None, "direction": ("right",)}
            for item in filter(None, spec.partition(":")[2].split(",")):
                key, _, value = item.partition("=")
                lo, _, hi = value.partition("-")
                if key not in ("square", "speed", "direction"):
                    raise ValueError(f"{spec}: unknown noise_square option {key!r} (square, speed, direction)")
                try:
                    if key == "direction":
                        source[key] = DIRECTIONS if value == "any" else tuple(value.split("|"))
                    else:
                        number = int if key == "square" else float
                        source[key] = (number(lo), number(hi or lo))
                    if not set(source["direction"]) <= set(DIRECTIONS):
                        raise ValueError
                except ValueError:
                    raise ValueError(f"{spec}: bad value {value!r} for {key} (square=N|A-B, speed=V|A-B, "
                                     f"direction=D|D with D in {DIRECTIONS} or any)") from None
            if source["square"] and not 1 <= source["square"][0] <= source["square"][1] <= self.image_size:
                raise ValueError(f"{spec}: the square must fit in the {self.image_size} px frame")
            return source
        folder = os.path.expanduser(spec)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no such folder: {folder} (a folder of videos or frame folders, 'noise_square', "
                                    "or a mixture [(spec, weight), ...])")
        videos, entries = [], index_folder(folder)
        for path, n, error in entries:
            if error:
                self._skip(path, error, "unreadable")
            elif n < self.n_source + self.gap_min:
                self._skip(path, f"too short ({n} frames < {self.n_source + self.gap_min})", "too_short")
            else:
                videos.append((path, n))
        if not videos:
            raise ValueError(f"no usable video in {folder}: {len(entries)} found ({' '.join(VIDEO_EXTS)} files "
                             "and folders of frames), none readable and long enough")
        print(f"rvm data: {folder}: {len(videos)} videos, {len(entries) - len(videos)} skipped", file=sys.stderr)
        return {"type": "folder", "videos": videos}

    def example(self, k):
        """Example k of this stream: a pure function of (seed, stream, k)."""
        ns, nt, size, window = self.n_source, self.n_target, self.image_size, self.window
        for attempt in range(100):
            rng = np.random.default_rng([self.seed, self.stream, k, attempt])
            source = self.sources[rng.choice(len(self.sources), p=self.weights)]
            if source["type"] == "noise":  # a fresh stimulus, no flip or crop: a crop would blur the noise, and
                # direction covers the flip. A square with a speed starts where it stays in the frame.
                frame_idx, deltas = sample_clip(rng, window, ns, nt, self.gap_min, self.gap_max, window)
                lo, hi = source["square"] or (size // 2, size // 2)  # default: half the frame, as the authors
                side = int(rng.integers(lo, hi + 1))
                speed = None if source["speed"] is None else float(rng.uniform(*source["speed"]))
                direction = source["direction"][rng.integers(len(source["direction"]))]
                offset = 0
                if speed is not None:
                    offset = int(rng.integers(0, max(0, size - side - math.floor(speed * (window - 1))) + 1))
                clip, masks = noise_square_video(window, size, side, speed, direction, rng, frame_idx, offset)
            else:
                path, n = source["videos"][rng.integers(len(source["videos"]))]
                frame_idx, deltas = sample_clip(rng, n, ns, nt, self.gap_min, self.gap_max, window)
                try:
                    frames = read_frames(path, frame_idx, min_side=2 * size)  # a crop still >= size
                except Exception as err:  # noqa: BLE001 -- a video that fails now (ends early, ...) is skipped
                    self._skip(path, str(err).removeprefix(f"{path}: "), "decode")
                    continue
                clip = augment(torch.from_numpy(frames).permute(0, 3, 1, 2), rng, size, **self.aug)
            ex = {"source": clip[:ns], "target": clip[ns:], "deltas": torch.from_numpy(deltas),
                  "frame_idx": torch.from_numpy(frame_idx)}
            if self.masks:  # every source is the noise square
                ex["source_mask"], ex["target_mask"] = masks.split([ns, nt])
            return {**ex, "index": torch.tensor(k), "skipped": torch.tensor(attempt)}
        raise RuntimeError(f"100 videos in a row failed to decode for example {k}; see the warnings above")

    def __iter__(self):
        """Worker w of n makes examples (batches of B on make_loader's copy) w, w + n, w + 2n, ... from
        start on; the DataLoader takes them from the workers in turn, so they come out in index order."""
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        B = self.batch_size or 1
        for b in itertools.count(worker, n_workers):
            examples = [self.example(k) for k in range(self.start + b * B, self.start + b * B + B)]
            if self.batch_size is None:
                yield examples[0]
            else:  # numpy's stack: torch's would fan out to intra-op threads, all waiting on a busy CPU
                yield {key: torch.from_numpy(np.stack([ex[key].numpy() for ex in examples])) for key in examples[0]}


def make_loader(dataset, batch_size, num_workers=0):
    """A DataLoader of batched clips (uint8 [B, T, 3, S, S]) from example dataset.start on, in index
    order for any num_workers; use it rather than a DataLoader over the ClipDataset itself, which
    interleaves the workers' examples. Workers need no seeding: each example seeds its own generator."""
    batches = copy.copy(dataset)  # the same stream, made in whole batches
    batches.batch_size = batch_size
    return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available())
