"""Label propagation: does the model know where things went? (paper §4.2.3, supplement §11.2)

A zero-shot probe of the frozen features. Nothing is trained. We give the labels of the first frame
of a video: object masks (DAVIS-2017), body-part masks (VIP) or 15 body joints (JHMDB). Each later
frame takes its labels from the frames before it, each patch copying the labels of the patches it
is most similar to. Only correspondence in feature space is being tested.

The protocol is the authors' evaluation notebook (google-deepmind/representations4d,
`colabs/rvm_evaluation_demo.ipynb`). It is the CRW protocol of Jabri et al. 2020, as CropMAE runs
it. Step by step, for one video:

 1. Resize every frame to the task resolution (DAVIS 480x880, JHMDB 320x320, VIP 448x880; Lanczos,
    as the notebook's `mediapy.resize_video` does). Unroll the model over the *whole* video in one
    streaming pass, `model.step` frame by frame. Keep the patch tokens of the core output o_t (CLS
    dropped) and L2-normalise each token: feats [T, h, w, C], h = H/16, w = W/16.
    `--features encoder` takes the encoder output instead: no recurrence, an image-model baseline.
 2. First-frame labels on the feature grid. DAVIS/VIP: nearest-resize the mask to the task
    resolution, make one channel per label value present, and resize that bilinearly to h x w. This
    gives soft labels at object borders. JHMDB: for each joint a small Gaussian (sigma = 0.5 cells)
    at its grid position, plus a background channel that is 1 where no joint has any mass.
 3. Propagate (`label_propagation`). The context of frame t is frame 0 (always) plus a queue of
    the `n_context` most recent (features, predicted soft labels) pairs. The queue starts as
    n_context copies of frame 0. Each cell of frame t gets
        affinity = <feature of the cell, feature of a context cell> / temperature
    against every context cell. Cells of *queued* frames farther than `radius` grid cells away
    (Euclidean distance, strict <) are excluded. Frame 0 is searched everywhere. The top-k
    affinities are taken over all context cells together, softmaxed, and used to weight the sum
    of those cells' soft labels. That sum is the cell's prediction, and it enters the queue.
    Settings (supplement Table 8): n_context 20, temperature 0.7, top-k 7 (VIP 10), radius 20.
 4. Read out. DAVIS/VIP: upsample the soft map bilinearly to the task resolution, argmax, map back
    to label values, and resize to the frame's native size with nearest-exact. JHMDB: each joint's
    position is the weighted mean of the top-5 cells of its map, scaled to native size.
 5. Score.
    DAVIS: J (region IoU) and F (boundary F-measure) exactly as the DAVIS-2017 toolkit
    (davisvideochallenge/davis2017-evaluation) computes them. This is checked against the toolkit's
    own published per-frame scores of OSVOS in tests/test_labelprop.py. Scores are taken at native
    resolution, without the first and last frames. Each object has a mean over frames. J-Mean and
    F-Mean average over all objects of all sequences, and J&F-Mean is their mean.
    VIP: one confusion matrix over 20 classes, all frames of all videos, then mIoU.
    JHMDB: PCK@0.1, where a joint is correct if it lies within 0.1 x (0.6 x the diagonal of the
    ground-truth joints' bounding box), counted per joint and averaged over the 15 joints.

`--long-horizon` (paper Fig. 4) scores DAVIS videos of at least 80 frames on their first
16/32/48/64/80 frames, each normalised by the 16-frame score. Features and propagation are both
causal: frame t never sees a later frame. So the predictions for the first N frames of a video are
exactly those for the video cut to N frames, and one pass over the first 80 frames serves every
horizon.

    python eval_labelprop.py --task davis --data DAVIS --ckpt out/rvm-s/ckpt.pt
    python eval_labelprop.py --task davis --data DAVIS --ckpt rvm_s.npz --features encoder
    python eval_labelprop.py --task davis --data DAVIS --init random --size s   # untrained baseline
    python eval_labelprop.py --task davis --data DAVIS --ckpt ckpt.pt --long-horizon
    python eval_labelprop.py --task jhmdb --data JHMDB --ckpt ckpt.pt
    python eval_labelprop.py --task vip --data VIP_Fine --ckpt ckpt.pt
    # small and fast, e.g. on a laptop:
    python eval_labelprop.py --task davis --data DAVIS --init random --resolution 240 432 \\
        --max-frames 20 --sequences blackswan,dog

Data layouts (each reader checks the whole layout before any model work is done):
    DAVIS  JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/*.png (palette), ImageSets/2017/val.txt
    VIP    Images/<video>/*.jpg, Annotations/Category_ids/<video>/*.png, lists/val_videos.txt
    JHMDB  Rename_Images/<class>/<video>/*.png, joint_positions/<class>/<video>/joint_positions.mat,
           splits/<class>_test_split1.txt (label 2 = test)
"""
import argparse
import csv
import math
import os
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.figure import Figure  # no pyplot: plots go straight to files, no display needed
from PIL import Image
from tqdm import tqdm

# Per-task settings from supplement Table 8. The rest (n_context 20, temperature 0.7, radius 20) is
# shared by all tasks.
TASKS = {
    "davis": dict(resolution=(480, 880), topk=7),
    "jhmdb": dict(resolution=(320, 320), topk=7),
    "vip": dict(resolution=(448, 880), topk=10),
}
VIP_CLASSES = ["background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks",
               "pants", "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm",
               "right-leg", "left-leg", "right-shoe", "left-shoe"]
JHMDB_JOINTS = 15
# Model sizes for `--init random` (Table 5). `tiny` is for smoke tests.
SIZES = {
    "tiny": dict(width=32, enc_layers=1, enc_heads=2, core_layers=1, core_heads=2,
                 dec_width=32, dec_layers=1, dec_heads=2),
    "s": dict(width=384, enc_heads=6, enc_layers=12, core_layers=4, core_heads=8),
    "b": dict(width=768, enc_heads=12, enc_layers=12, core_layers=4, core_heads=12),
    "l": dict(width=1024, enc_heads=16, enc_layers=24, core_layers=4, core_heads=16),
    "h": dict(width=1280, enc_heads=16, enc_layers=32, core_layers=4, core_heads=16),
}


# ----------------------------------------------------------------------------------------------
# Reading the datasets. Each reader checks the whole layout first: a missing folder, a count
# mismatch or a wrong mask format is an error that names the path, raised before any model work.


def _require_dir(path, what):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _require_file(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _files(folder, ext):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(ext))


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _read_list(path, what):
    _require_file(path, what)
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"{what} lists no videos: {path}")
    return names


def _select(names, sequences, list_path):
    """Keep the videos named by `--sequences` (in the list's order); unknown names are an error."""
    if not sequences:
        return names
    unknown = [s for s in sequences if s not in names]
    if unknown:
        raise ValueError(f"sequences {unknown} are not listed in {list_path}")
    return [n for n in names if n in sequences]


def _check_frames_and_masks(frame_dir, mask_dir, modes):
    """Frames (*.jpg) and masks (*.png) of one video: same count, same names, same sizes, and
    masks stored in one of `modes` (DAVIS: palette 'P')."""
    frames, masks = _files(frame_dir, ".jpg"), _files(mask_dir, ".png")
    if not frames:
        raise ValueError(f"no .jpg frames in {frame_dir}")
    if len(frames) != len(masks):
        raise ValueError(f"{len(frames)} frames in {frame_dir} but {len(masks)} masks in {mask_dir}: "
                         "scoring needs a ground-truth mask for every frame")
    for frame, mask in zip(frames, masks, strict=True):
        if _stem(frame) != _stem(mask):
            raise ValueError(f"frame {frame} has no mask of the same name in {mask_dir} (found {mask})")
        with Image.open(mask) as m, Image.open(frame) as im:  # lazy: reads headers only
            if m.mode not in modes:
                raise ValueError(f"mask {mask} is a mode-{m.mode!r} image; expected {' or '.join(modes)}"
                                 + (" (a palette PNG of object indices)" if modes == ("P",) else ""))
            if m.size != im.size:
                raise ValueError(f"mask {mask} is {m.size[0]}x{m.size[1]} but frame {frame} is "
                                 f"{im.size[0]}x{im.size[1]}")
    return frames, masks


def read_davis(root, sequences=None):
    """DAVIS-2017 val: [{'name', 'frames': [jpg paths], 'masks': [png paths]}] for each sequence."""
    _require_dir(root, "DAVIS folder")
    list_path = os.path.join(root, "ImageSets", "2017", "val.txt")
    names = _select(_read_list(list_path, "DAVIS sequence list"), sequences, list_path)
    videos = []
    for name in names:
        frame_dir = os.path.join(root, "JPEGImages", "480p", name)
        mask_dir = os.path.join(root, "Annotations", "480p", name)
        _require_dir(frame_dir, f"frames of sequence {name!r} (listed in {list_path})")
        _require_dir(mask_dir, f"annotations of sequence {name!r} (listed in {list_path})")
        frames, masks = _check_frames_and_masks(frame_dir, mask_dir, modes=("P",))
        first = read_mask(masks[0])
        if not ((first > 0) & (first < 255)).any():
            raise ValueError(f"first-frame annotation {masks[0]} has no object to propagate")
        videos.append(dict(name=name, frames=frames, masks=masks))
    return videos


def read_vip(root, sequences=None):
    """VIP (the official VIP_Fine layout, as the authors' notebook reads it): per video its frames
    and its part-label maps (category ids 0..19 in single-channel PNGs)."""
    _require_dir(root, "VIP folder")
    list_path = os.path.join(root, "lists", "val_videos.txt")
    names = _select(_read_list(list_path, "VIP video list"), sequences, list_path)
    videos = []
    for name in names:
        frame_dir = os.path.join(root, "Images", name)
        mask_dir = os.path.join(root, "Annotations", "Category_ids", name)
        _require_dir(frame_dir, f"frames of video {name!r} (listed in {list_path})")
        _require_dir(mask_dir, f"part labels of video {name!r} (listed in {list_path})")
        frames, masks = _check_frames_and_masks(frame_dir, mask_dir, modes=("L", "P"))
        if not (read_mask(masks[0]) < len(VIP_CLASSES)).any():
            raise ValueError(f"first-frame labels {masks[0]} have no class id below {len(VIP_CLASSES)}")
        videos.append(dict(name=name, frames=frames, masks=masks))
    return videos


def read_jhmdb_joints(path):
    """joint_positions.mat -> [T, 15, 2] (x, y), 0-based pixels. The file holds `pos_img` as
    [2, 15, T] in MATLAB's 1-based pixels."""
    try:
        import scipy.io  # optional dependency, only needed for JHMDB
    except ImportError:
        raise ImportError("reading JHMDB's joint_positions.mat needs scipy: pip install scipy") from None
    try:
        pos = scipy.io.loadmat(path)["pos_img"]
    except Exception as err:  # noqa: BLE001 -- any unreadable file gets the same clear message
        raise ValueError(f"{path}: cannot read 'pos_img' ({type(err).__name__}: {err})") from None
    if pos.ndim != 3 or pos.shape[:2] != (2, JHMDB_JOINTS):
        raise ValueError(f"{path}: 'pos_img' has shape {pos.shape}; expected (2, {JHMDB_JOINTS}, T)")
    return pos.astype(np.float32).transpose(2, 1, 0) - 1


def read_jhmdb(root, sequences=None):
    """JHMDB split-1 test videos: per video its frames and its ground-truth joints [T, 15, 2]."""
    _require_dir(root, "JHMDB folder")
    split_dir = os.path.join(root, "splits")
    _require_dir(split_dir, "JHMDB split lists")
    split_files = sorted(f for f in os.listdir(split_dir) if f.endswith("_test_split1.txt"))
    if not split_files:
        raise FileNotFoundError(f"no <class>_test_split1.txt files in {split_dir}")
    names = []
    for split in split_files:
        action = split[: -len("_test_split1.txt")]
        with open(os.path.join(split_dir, split)) as f:
            for line in f:
                if line.strip():
                    video, kind = line.split()
                    if kind == "2":  # 1 = train, 2 = test
                        names.append(f"{action}/{os.path.splitext(video)[0]}")
    names = _select(names, sequences, split_dir)
    videos = []
    for name in names:
        frame_dir = os.path.join(root, "Rename_Images", name)
        joints_path = os.path.join(root, "joint_positions", name, "joint_positions.mat")
        _require_dir(frame_dir, f"frames of video {name!r} (listed in {split_dir})")
        _require_file(joints_path, f"joints of video {name!r}")
        frames = _files(frame_dir, ".png")
        if not frames:
            raise ValueError(f"no .png frames in {frame_dir}")
        joints = read_jhmdb_joints(joints_path)
        if len(joints) != len(frames):
            raise ValueError(f"{len(frames)} frames in {frame_dir} but {len(joints)} in {joints_path}")
        videos.append(dict(name=name, frames=frames, joints=joints))
    return videos


def read_frames(paths, size):
    """Frames as uint8 [T, H, W, 3], resized to size = (H, W) with Lanczos. This is what the
    authors' notebook does through mediapy.resize_video."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
            out.append(np.asarray(im))
    return np.stack(out)


def read_mask(path):
    """A label map as uint8 [H, W]: the palette indices of a palette PNG, or the grey values."""
    with Image.open(path) as im:
        return np.array(im)


# ----------------------------------------------------------------------------------------------
# Features: one streaming pass over the whole video.


def model_features(model, features="core", device="cpu"):
    """A function that maps uint8 frames [T, H, W, 3] to L2-normalised patch features [T, h, w, C]
    (on the CPU). 'core' is the recurrent core's output o_t, the state carried from frame to frame.
    'encoder' is the per-frame encoder output (no recurrence: the image-model baseline). Only one
    frame is on the device at a time, so memory does not grow with the length of the video."""
    if features not in ("core", "encoder"):
        raise ValueError(f"features must be 'core' or 'encoder', got {features!r}")
    P = model.config.patch_size

    @torch.no_grad()
    def extract(frames, progress=None):
        T, H, W, _ = frames.shape
        tensors = (torch.from_numpy(frame).to(device).permute(2, 0, 1)[None].float() / 255 for frame in frames)
        out = []
        for o in model.stream(tensors, kind=features):
            out.append(F.normalize(o[0, 1:].float(), dim=-1).cpu())  # drop CLS (token 0)
            if progress is not None:
                progress.update()
        return rearrange(torch.stack(out), "t (h w) c -> t h w c", h=H // P, w=W // P)

    return extract


# ----------------------------------------------------------------------------------------------
# First-frame labels on the feature grid.


def mask_to_labels(mask, size, grid, values=None):
    """Label map [H0, W0] -> soft labels [h, w, K] (float32) and the K label values they stand for.
    Nearest-resize the map to the task resolution `size`, one-hot it, and resize bilinearly to the
    feature grid. (The notebook does this with cv2: INTER_NEAREST is torch's 'nearest' and
    INTER_LINEAR is torch's 'bilinear' without antialiasing.)"""
    values = np.unique(mask) if values is None else np.asarray(values)
    m = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")[0, 0]
    onehot = (m[None] == torch.from_numpy(values.astype(np.float32))[:, None, None]).float()
    soft = F.interpolate(onehot[None], size=grid, mode="bilinear", align_corners=False)[0]
    return soft.permute(1, 2, 0).contiguous(), values


def _gaussian(h, w, x, y, sigma=0.5):
    """A 2-D Gaussian at (x, y) on an h x w grid, drawn the way the reference code (pose-hg-train's
    draw.py, via UVC, CRW and the authors' notebook) draws it: a (6 sigma + 1)^2 patch placed at
    integer offsets, with int() truncating toward zero. Zero if the patch misses the grid."""
    img = np.zeros((h, w), np.float32)
    ul = [int(x - 3 * sigma), int(y - 3 * sigma)]
    br = [int(x + 3 * sigma + 1), int(y + 3 * sigma + 1)]
    if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
        return img
    size = 6 * sigma + 1
    g = np.arange(0, size, 1, float)
    c = size // 2
    g = np.exp(-((g[None, :] - c) ** 2 + (g[:, None] - c) ** 2) / (2 * sigma ** 2))
    gx = max(0, -ul[0]), min(br[0], w) - ul[0]
    gy = max(0, -ul[1]), min(br[1], h) - ul[1]
    ix = max(0, ul[0]), min(br[0], w)
    iy = max(0, ul[1]), min(br[1], h)
    img[iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return img


def pose_to_labels(joints, grid, native_size, sigma=0.5):
    """Joints [J, 2] (x, y) in native pixels -> soft labels [h, w, J + 1]: channel 0 is background
    (1 where no joint has mass), channel 1 + j a Gaussian at joint j's grid position."""
    h, w = grid
    H0, W0 = native_size
    labels = np.zeros((h, w, len(joints) + 1), np.float32)
    for j, (x, y) in enumerate(joints):
        labels[..., j + 1] = _gaussian(h, w, x * w / W0, y * h / H0, sigma)
    labels[..., 0] = labels.sum(-1) == 0
    return torch.from_numpy(labels)


# ----------------------------------------------------------------------------------------------
# Label propagation.


def label_propagation(feats, labels, n_context=20, temperature=0.7, topk=7, radius=20,
                      chunk_size=None, device=None, progress=None):
    """Propagate first-frame soft labels through a video by feature similarity.

    feats [T, h, w, C]: L2-normalised features (any device; frames are moved to `device` one at a
    time). labels [h, w, K]: frame 0's soft labels. Returns soft predictions [T, h, w, K] on the CPU.
    Frame 0's prediction is its labels.

    Context of frame t: frame 0, searched everywhere, plus a queue of the `n_context` most recent
    (features, prediction) pairs, searched only within `radius` grid cells (Euclidean, strict <) of
    the query cell. The queue starts as n_context copies of frame 0. The top-k affinities
    (dot product / temperature) over all context cells together are softmaxed, and they weight a
    sum of those cells' soft labels. The query cells are processed in chunks so that the affinity
    matrix stays small: a 30x55 grid against 21 frames would be 1650 x 34650 floats at once.

    One difference from the authors' notebook: its loop also runs the update at t = 0. That
    replaces one of the n_context copies of frame 0 by frame 0's self-propagated (smoothed)
    labels, and outputs those for frame 0. Here frame 0 keeps its given labels throughout.
    """
    T, h, w, C = feats.shape
    N, K = h * w, labels.shape[-1]
    if labels.shape[:2] != (h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match the feature grid {h}x{w}")
    device = feats.device if device is None else torch.device(device)
    # far[q, c]: context cell c of a queued frame is too far from query cell q (frame 0 is exempt).
    # Squared integer distances against radius^2: the same as the notebook's sqrt(d2) < radius.
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], dim=1)
    far = (((pos[:, None] - pos[None]) ** 2).sum(-1) >= radius ** 2).to(device)  # [N, N]
    chunk_size = chunk_size or max(1, 2 ** 24 // ((n_context + 1) * N))  # ~64 MB of affinities

    first = (feats[0].reshape(N, C).to(device, torch.float32), labels.reshape(N, K).to(device, torch.float32))
    queue = deque([first] * n_context, maxlen=n_context)  # the oldest pair drops out on append
    preds = [labels.reshape(N, K).float().cpu()]
    for t in range(1, T):
        ctx_feats = torch.stack([first[0]] + [f for f, _ in queue])  # [1 + n, N, C]
        ctx_labels = torch.cat([first[1]] + [lab for _, lab in queue])  # [(1 + n) N, K]
        k = min(topk, ctx_labels.shape[0])
        query = feats[t].reshape(N, C).to(device, torch.float32)
        pred = torch.empty(N, K, device=device)
        for s in range(0, N, chunk_size):
            q = query[s:s + chunk_size]
            aff = torch.einsum("qc,fnc->qfn", q, ctx_feats) / temperature  # [chunk, 1 + n, N]
            aff[:, 1:].masked_fill_(far[s:s + chunk_size, None, :], float("-inf"))
            weights, idx = aff.flatten(1).topk(k, dim=1)  # jointly over all context cells
            weights = weights.softmax(dim=1)
            pred[s:s + chunk_size] = torch.einsum("qk,qkl->ql", weights, ctx_labels[idx])
        queue.append((query, pred))
        preds.append(pred.cpu())
        if progress is not None:
            progress.update()
    return torch.stack(preds).reshape(T, h, w, K)


# ----------------------------------------------------------------------------------------------
# Reading out the predictions.


def labels_to_mask(soft, values, size, native_size):
    """Soft labels [h, w, K] -> label map [H0, W0] (uint8). Bilinear upsampling to the task
    resolution, argmax, back to label values, then nearest-exact to the native size (the notebook's
    cv2 INTER_LINEAR then INTER_NEAREST_EXACT)."""
    x = F.interpolate(soft.permute(2, 0, 1)[None].float(), size=size, mode="bilinear", align_corners=False)
    label = torch.from_numpy(np.asarray(values, np.float32))[x[0].argmax(0)]
    label = F.interpolate(label[None, None], size=native_size, mode="nearest-exact")[0, 0]
    return label.numpy().astype(np.uint8)


def labels_to_pose(soft, native_size, topk=5):
    """Soft labels [T, h, w, 1 + J] -> joints [T, J, 2] (x, y) in native pixels, visible [T, J].
    Each joint is the weighted mean of the top-5 cells of its map, in cell units scaled by native
    size / grid size as in the reference. A joint whose map is all zero is invisible."""
    T, h, w, _ = soft.shape
    H0, W0 = native_size
    flat = soft[..., 1:].reshape(T, h * w, -1)  # drop the background channel
    vals, ids = flat.topk(topk, dim=1)  # [T, topk, J]
    vals = vals / vals.sum(1, keepdim=True).clamp_min(1e-30)
    x = ((ids % w).float() * vals).sum(1) / w * W0
    y = ((ids // w).float() * vals).sum(1) / h * H0
    visible = flat.sum(1) > 0
    joints = torch.stack([x, y], dim=-1)
    joints[~visible] = -1
    return joints.numpy(), visible.numpy()


# ----------------------------------------------------------------------------------------------
# Metrics. J and F follow davis2017-evaluation's davis2017/metrics.py line by line, with numpy
# only. cv2.dilate with skimage's disk is replaced by an exact disk dilation of our own. The
# toolkit replaces the void label 255 by background before it builds its void mask, so that mask
# is always empty; here 255 is background and there is no void mask at all, with the same result.


def davis_j(gt, pred):
    """Region similarity J (Jaccard index) per frame: masks [T, H, W] (or [H, W]) -> [T] (or a
    float). Two empty masks score 1, as in the toolkit."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    inter = (gt & pred).sum(axis=(-2, -1))
    union = (gt | pred).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def seg2bmap(seg):
    """1-pixel-wide boundary of a binary mask: pixels that differ from their east, south or
    south-east neighbour (the toolkit's _seg2bmap, with the last row and column as it handles them)."""
    seg = np.asarray(seg, bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def dilate_disk(mask, r):
    """Binary dilation by skimage.morphology.disk(r), the offsets with dx^2 + dy^2 <= r^2. Pixels
    outside the image count as empty, as in cv2.dilate. For each row offset dy, dilate every row
    horizontally by the disk's half-width there (a running sum finds "any pixel within +-half") and
    shift the result by dy."""
    H, W = mask.shape
    out = np.zeros((H, W), bool)
    csum = np.zeros((H, W + 1), np.int32)
    np.cumsum(mask, axis=1, out=csum[:, 1:])
    x = np.arange(W)
    for dy in range(-r, r + 1):
        half = math.isqrt(r * r - dy * dy)
        row = (csum[:, np.minimum(x + half + 1, W)] - csum[:, np.maximum(x - half, 0)]) > 0
        if dy >= 0:
            out[:H - dy] |= row[dy:]
        else:
            out[-dy:] |= row[:H + dy]
    return out


def _f_frame(gt, pred, bound_th):
    # Tolerance in pixels: a fraction of the image diagonal (ceil(0.008 * 979.6) = 8 px at 480p).
    r = int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*gt.shape)))
    fg, gb = seg2bmap(pred), seg2bmap(gt)
    n_fg, n_gt = int(fg.sum()), int(gb.sum())
    # The toolkit's conventions for empty boundaries: both empty -> P = R = 1 (F = 1); only one of
    # them empty -> (P, R) = (1, 0) or (0, 1), F = 0.
    if n_fg == 0 or n_gt == 0:
        return 1.0 if n_fg == n_gt else 0.0
    # Only a window around the boundaries matters; dilating inside it is exact and much faster.
    ys, xs = np.nonzero(fg | gb)
    y0, y1 = max(ys.min() - r, 0), min(ys.max() + r + 1, gt.shape[0])
    x0, x1 = max(xs.min() - r, 0), min(xs.max() + r + 1, gt.shape[1])
    fg, gb = fg[y0:y1, x0:x1], gb[y0:y1, x0:x1]
    precision = (fg & dilate_disk(gb, r)).sum() / n_fg
    recall = (gb & dilate_disk(fg, r)).sum() / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def davis_f(gt, pred, bound_th=0.008):
    """Contour accuracy F (boundary F-measure) per frame: masks [T, H, W] (or [H, W]) -> [T] (or a
    float). A boundary pixel matches if the other mask's boundary lies within the disk tolerance."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if gt.ndim == 2:
        return _f_frame(gt, pred, bound_th)
    return np.array([_f_frame(g, p, bound_th) for g, p in zip(gt, pred, strict=True)])


def confusion(gt, pred, n_classes=20):
    """Confusion matrix [n, n] (rows: ground truth, columns: prediction). Ground-truth pixels
    outside 0..n-1 (e.g. 255, unlabelled) are ignored, and so are predictions outside that range."""
    gt, pred = np.asarray(gt).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    keep = (gt >= 0) & (gt < n_classes) & (pred >= 0) & (pred < n_classes)
    return np.bincount(n_classes * gt[keep] + pred[keep], minlength=n_classes ** 2).reshape(n_classes, n_classes)


def miou(hist):
    """Mean IoU over the classes of a confusion matrix: IoU = TP / (GT + predicted - TP). A class
    absent from both ground truth and prediction (0 / 0) is left out of the mean. Returns
    (mIoU, per-class IoU)."""
    hist = np.asarray(hist, np.float64)
    tp = np.diag(hist)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (hist.sum(1) + hist.sum(0) - tp)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"), iou


def pck(gt, pred, visible=None, threshold=0.1):
    """PCK as UVC's eval_pck.py and the authors' notebook compute it. Inputs are lists over videos
    (or one video) of joints [T, J, 2], plus visible [T, J] (default: all; the reference passes the
    visibility of the *predicted* joints, i.e. whose propagated map is not all zero). Frame 0 is given, so
    only frames t >= 1 count. The normaliser of frame t is 0.6 x the diagonal of the bounding box of
    the ground-truth joints that are visible. A joint is correct if its distance to the ground truth,
    divided by that normaliser, is <= threshold. Returns (mean over joints, per-joint PCK); each
    joint's PCK pools its frames of all videos."""
    if isinstance(gt, np.ndarray) and gt.ndim == 3:
        gt, pred = [gt], [pred]
        visible = None if visible is None else [visible]
    if visible is None:
        visible = [np.ones(g.shape[:2], bool) for g in gt]
    n_joints = gt[0].shape[1]
    dists = [[] for _ in range(n_joints)]
    for g, p, vis in zip(gt, pred, visible, strict=True):
        g, p, vis = np.asarray(g, np.float64), np.asarray(p, np.float64), np.asarray(vis, bool)
        for t in range(1, len(g)):
            if not vis[t].any():
                continue
            pts = g[t, vis[t]]
            scale = 0.6 * np.linalg.norm(pts.max(0) - pts.min(0))
            for j in np.nonzero(vis[t])[0]:
                dists[j].append(np.linalg.norm(p[t, j] - g[t, j]) / scale)
    per_joint = np.array([np.mean(np.array(d) <= threshold) if d else np.nan for d in dists])
    return float(np.nanmean(per_joint)), per_joint


# ----------------------------------------------------------------------------------------------
# Evaluation, one task at a time.


def _grid(size, patch):
    H, W = size
    if H % patch or W % patch:
        raise ValueError(f"--resolution {H} {W} is not a multiple of the patch size {patch}")
    return H // patch, W // patch


def propagate_masks(name, frames, gt, extract, resolution, grid, prop, values=None):
    """One video, DAVIS or VIP: features of every frame, frame 0's labels (gt[0]) propagated through
    them, and each frame's prediction read out as a label map at the native size of gt."""
    bar = tqdm(total=2 * len(frames) - 1, desc=name, leave=False)
    feats = extract(frames, progress=bar)
    labels, values = mask_to_labels(gt[0], resolution, grid, values=values)
    soft = label_propagation(feats, labels, progress=bar, **prop)
    bar.close()
    return np.stack([labels_to_mask(s, values, resolution, gt.shape[1:]) for s in soft])


def evaluate_davis(videos, extract, resolution, patch_size=16, prop=None, out_dir=None,
                   save_masks=False, horizons=None):
    """Propagate each sequence's first-frame masks and score them with J and F. Returns one row per
    object, with its per-frame J and F over frames 1..T-1 ('j', 'f'; the last frame is dropped when
    the means are taken). With `horizons`, only the first max(horizons) frames are used."""
    prop = prop or {}
    grid = _grid(resolution, patch_size)
    rows = []
    for video in videos:
        n = max(horizons) if horizons else len(video["frames"])
        frames = read_frames(video["frames"][:n], resolution)
        gt = np.stack([read_mask(m) for m in video["masks"][:n]])
        gt[gt == 255] = 0  # the toolkit reads void as background
        T = len(frames)
        pred = propagate_masks(video["name"], frames, gt, extract, resolution, grid, prop)
        if save_masks and out_dir:
            folder = os.path.join(out_dir, "masks", video["name"])
            os.makedirs(folder, exist_ok=True)
            with Image.open(video["masks"][0]) as im:
                palette = im.getpalette()
            for mask_path, p in zip(video["masks"], pred, strict=True):
                im = Image.fromarray(p)
                im.putpalette(palette)  # an 'L' image with a palette becomes a 'P' image
                im.save(os.path.join(folder, os.path.basename(mask_path)))
        # Objects as the toolkit counts them: 1 .. the largest index in the first frame's mask.
        for obj in range(1, int(gt[0].max()) + 1):
            g, p = gt[1:] == obj, pred[1:] == obj
            rows.append(dict(sequence=video["name"], object=obj, n_frames=T, j=davis_j(g, p), f=davis_f(g, p)))
            tqdm.write(f"{video['name']}_{obj}: J {rows[-1]['j'][:-1].mean():.3f}  "
                       f"F {rows[-1]['f'][:-1].mean():.3f}  ({T} frames)")
    return rows


def davis_summary(rows, n_frames=None):
    """Global J-Mean, F-Mean, J&F-Mean over all objects. Each object is scored on frames 1..T-2 of
    its video, or, with n_frames, of the video's first n_frames frames (the long-horizon mode)."""
    J = [np.mean(r["j"][: (n_frames or r["n_frames"]) - 2]) for r in rows]
    Fm = [np.mean(r["f"][: (n_frames or r["n_frames"]) - 2]) for r in rows]
    j, f = float(np.mean(J)), float(np.mean(Fm))
    return dict(jf=(j + f) / 2, j=j, f=f)


def evaluate_vip(videos, extract, resolution, patch_size=16, prop=None, out_dir=None, save_masks=False,
                 n_classes=20):
    """Propagate each video's first-frame part labels. Returns the confusion matrix summed over all
    frames of all videos, and a row per video with its own mIoU."""
    prop = prop or {}
    grid = _grid(resolution, patch_size)
    hist, rows = np.zeros((n_classes, n_classes), np.int64), []
    for video in videos:
        frames = read_frames(video["frames"], resolution)
        gt = np.stack([read_mask(m) for m in video["masks"]])
        T = len(frames)
        # Propagate only real classes. 255 (unlabelled) gets no channel.
        values = np.array([v for v in np.unique(gt[0]) if v < n_classes])
        pred = propagate_masks(video["name"], frames, gt, extract, resolution, grid, prop, values=values)
        if save_masks and out_dir:
            folder = os.path.join(out_dir, "masks", video["name"])
            os.makedirs(folder, exist_ok=True)
            for mask_path, p in zip(video["masks"], pred, strict=True):
                Image.fromarray(p).save(os.path.join(folder, os.path.basename(mask_path)))
        h = sum(confusion(g, p, n_classes) for g, p in zip(gt, pred, strict=True))  # all frames, as the notebook
        hist += h
        rows.append(dict(video=video["name"], n_frames=T, miou=miou(h)[0]))
        tqdm.write(f"{video['name']}: mIoU {rows[-1]['miou']:.3f}  ({T} frames)")
    return hist, rows


def evaluate_jhmdb(videos, extract, resolution, patch_size=16, prop=None):
    """Propagate each video's first-frame joints. Returns the ground-truth joints, the predicted
    joints and their visibility (lists over videos, [T, 15, 2] / [T, 15]), and a row per video."""
    prop = prop or {}
    grid = _grid(resolution, patch_size)
    gts, preds, visibles, rows = [], [], [], []
    for video in videos:
        frames = read_frames(video["frames"], resolution)
        with Image.open(video["frames"][0]) as im:
            native = (im.size[1], im.size[0])
        T = len(frames)
        bar = tqdm(total=2 * T - 1, desc=video["name"], leave=False)
        feats = extract(frames, progress=bar)
        labels = pose_to_labels(video["joints"][0], grid, native)
        soft = label_propagation(feats, labels, progress=bar, **prop)
        bar.close()
        joints, visible = labels_to_pose(soft, native)
        gts.append(video["joints"])
        preds.append(joints)
        visibles.append(visible)
        rows.append(dict(video=video["name"], n_frames=T, pck=pck(video["joints"], joints, visible)[0]))
        tqdm.write(f"{video['name']}: PCK@0.1 {rows[-1]['pck']:.3f}  ({T} frames)")
    return gts, preds, visibles, rows


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def plot_long_horizon(horizons, scores, path, label="RVM"):
    """Paper Fig. 4: J&F on the first N frames, relative to N = 16 frames."""
    fig = Figure(figsize=(4.5, 3.5))
    ax = fig.subplots()
    ax.plot(horizons, scores, "o-", label=label)
    ax.set_xlabel("number of frames")
    ax.set_ylabel(f"J&F relative to {horizons[0]} frames")
    ax.set_xticks(horizons)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=150)


# ----------------------------------------------------------------------------------------------
# Command line.


def get_args_parser():
    p = argparse.ArgumentParser("Label propagation (DAVIS-2017 / JHMDB / VIP)", add_help=True)
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--data", required=True, help="dataset root (layouts in the module docstring)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="a train.py checkpoint (.pt) or the authors' .npz")
    src.add_argument("--init", choices=["random"], help="a randomly initialised model (a baseline)")
    p.add_argument("--size", default="tiny", choices=sorted(SIZES), help="model size for --init random")
    p.add_argument("--seed", type=int, default=0, help="seed for --init random")
    p.add_argument("--features", default="core", choices=["core", "encoder"],
                   help="core: recurrent core output (RVM); encoder: per-frame encoder output (image-model baseline)")
    p.add_argument("--resolution", type=int, nargs=2, metavar=("H", "W"), help="task resolution (default per task)")
    p.add_argument("--topk", type=int, help="neighbours (default 7; VIP 10)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--n-context", type=int, default=20, help="queued context frames besides frame 0")
    p.add_argument("--radius", type=float, default=20, help="search radius in grid cells for queued frames")
    p.add_argument("--max-frames", type=int, help="use only the first N frames of each video")
    p.add_argument("--sequences", help="comma-separated video names (default: all in the list)")
    p.add_argument("--long-horizon", action="store_true", help="DAVIS: paper Fig. 4 (first 16..80 frames)")
    p.add_argument("--horizons", default="16,32,48,64,80", help="frame counts for --long-horizon")
    p.add_argument("--out", default="out/labelprop", help="folder for CSVs, masks and plots")
    p.add_argument("--save-masks", action="store_true", help="DAVIS/VIP: write the predicted masks as PNGs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    settings = TASKS[args.task]
    resolution = tuple(args.resolution or settings["resolution"])
    prop = dict(n_context=args.n_context, temperature=args.temperature, topk=args.topk or settings["topk"],
                radius=args.radius, device=args.device)
    if prop["n_context"] < 0 or prop["topk"] < 1 or prop["temperature"] <= 0:
        raise ValueError("need --n-context >= 0, --topk >= 1 and --temperature > 0")
    sequences = [s for s in args.sequences.split(",") if s] if args.sequences else None
    horizons = sorted(int(n) for n in args.horizons.split(",")) if args.long_horizon else None

    # 1. Read and check the whole dataset before any model work.
    reader = dict(davis=read_davis, jhmdb=read_jhmdb, vip=read_vip)[args.task]
    videos = reader(args.data, sequences)
    if args.long_horizon:
        if args.task != "davis":
            raise ValueError("--long-horizon is the DAVIS experiment of paper Fig. 4; use --task davis")
        if horizons[0] < 3:
            raise ValueError(f"--horizons must be >= 3 frames (first and last are not scored), got {horizons}")
        if args.max_frames:
            raise ValueError("--long-horizon picks its own frame counts (--horizons); drop --max-frames")
        videos = [v for v in videos if len(v["frames"]) >= horizons[-1]]
        if not videos:
            raise ValueError(f"no video in {args.data} has the {horizons[-1]} frames --long-horizon needs")
    if args.max_frames:
        if args.max_frames < (3 if args.task == "davis" else 2):
            raise ValueError("--max-frames is too small to leave a frame to score")
        videos = [dict(v, **{k: v[k][: args.max_frames] for k in ("frames", "masks", "joints") if k in v})
                  for v in videos]

    # 2. The model.
    # Imported here, not at the top, so that the readers and metrics work without model.py.
    from model import RVM, RVMConfig, load_model
    if args.init == "random":
        torch.manual_seed(args.seed)
        model = RVM(RVMConfig(**SIZES[args.size])).eval()
        what = f"random init ({args.size})"
    else:
        model = load_model(args.ckpt)
        what = args.ckpt
    model = model.to(args.device)
    P = model.config.patch_size
    _grid(resolution, P)
    extract = model_features(model, args.features, args.device)
    print(f"{args.task}: {len(videos)} videos at {resolution[0]}x{resolution[1]}, {what}, {args.features} "
          f"features, n_context {prop['n_context']}, temperature {prop['temperature']}, top-k {prop['topk']}, "
          f"radius {prop['radius']:g}")
    os.makedirs(args.out, exist_ok=True)

    # 3. Propagate and score.
    if args.task == "davis":
        rows = evaluate_davis(videos, extract, resolution, P, prop, args.out, args.save_masks, horizons)
        if horizons:
            table = [(n, davis_summary(rows, n)) for n in horizons]
            base = table[0][1]["jf"]
            _write_csv(os.path.join(args.out, "long_horizon.csv"),
                       ["frames", "J&F-Mean", "J-Mean", "F-Mean", f"J&F relative to {horizons[0]}"],
                       [[n, f"{s['jf']:.4f}", f"{s['j']:.4f}", f"{s['f']:.4f}", f"{s['jf'] / base:.4f}"]
                        for n, s in table])
            plot_long_horizon(horizons, [s["jf"] / base for _, s in table],
                              os.path.join(args.out, "long_horizon.png"), label=f"{args.features} features")
            print(f"long horizon, {len(videos)} videos of >= {horizons[-1]} frames:")
            for n, s in table:
                print(f"  {n:3d} frames  J&F-Mean {s['jf']:.3f}  relative {s['jf'] / base:.3f}")
        s = davis_summary(rows, horizons[-1] if horizons else None)
        _write_csv(os.path.join(args.out, "davis_per_sequence.csv"),
                   ["sequence", "object", "frames", "J-Mean", "F-Mean", "J&F-Mean"],
                   [[r["sequence"], r["object"], r["n_frames"], f"{np.mean(r['j'][:-1]):.4f}",
                     f"{np.mean(r['f'][:-1]):.4f}", f"{(np.mean(r['j'][:-1]) + np.mean(r['f'][:-1])) / 2:.4f}"]
                    for r in rows])
        line = (f"J&F-Mean {s['jf']:.3f}  J-Mean {s['j']:.3f}  F-Mean {s['f']:.3f}  "
                f"({len(rows)} objects in {len(videos)} sequences)")
    elif args.task == "vip":
        hist, rows = evaluate_vip(videos, extract, resolution, P, prop, args.out, args.save_masks)
        m, per_class = miou(hist)
        _write_csv(os.path.join(args.out, "vip_per_video.csv"), ["video", "frames", "mIoU"],
                   [[r["video"], r["n_frames"], f"{r['miou']:.4f}"] for r in rows])
        _write_csv(os.path.join(args.out, "vip_per_class.csv"), ["class", "IoU"],
                   [[c, f"{v:.4f}"] for c, v in zip(VIP_CLASSES, per_class, strict=True)])
        line = f"mIoU {m:.3f}  ({len(videos)} videos, {len(VIP_CLASSES)} classes)"
    else:
        gts, preds, visibles, rows = evaluate_jhmdb(videos, extract, resolution, P, prop)
        p1, per_joint = pck(gts, preds, visibles, 0.1)
        p2, _ = pck(gts, preds, visibles, 0.2)
        _write_csv(os.path.join(args.out, "jhmdb_per_video.csv"), ["video", "frames", "PCK@0.1"],
                   [[r["video"], r["n_frames"], f"{r['pck']:.4f}"] for r in rows])
        line = f"PCK@0.1 {p1:.3f}  PCK@0.2 {p2:.3f}  ({len(videos)} videos)"
    print(line)
    with open(os.path.join(args.out, f"{args.task}_result.txt"), "w") as f:
        f.write(line + "\n")
    return line


if __name__ == "__main__":
    main()
