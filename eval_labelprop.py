"""Label propagation: does the model know where things went? (paper §4.2.3, supplement §11.2)

A zero-shot probe of frozen features; nothing is trained. Given the labels of a video's first
frame -- object masks (DAVIS-2017), body-part masks (VIP) or 15 body joints (JHMDB) -- each later
frame takes its labels from the frames before it, each patch copying the labels of the patches
most similar to it: only correspondence in feature space is tested. The protocol is the authors'
evaluation notebook (google-deepmind/representations4d, `colabs/rvm_evaluation_demo.ipynb`): the
CRW protocol of Jabri et al. 2020 as CropMAE runs it. For one video, with supplement Table 8's
settings per task (RESOLUTION, PROPAGATION):

 1. Resize every frame to the task resolution (Lanczos). Unroll the model over the video a frame
    at a time (the frames are read whole first, every frame's features kept) and keep the patch
    tokens of the core output o_t, L2-normalised: feats [T, h, w, C] (`--features=encoder`: the
    encoder's ê_t, an image-model baseline).
 2. First-frame labels on the feature grid: DAVIS/VIP one channel per label value, resized
    bilinearly to h x w (soft labels at borders); JHMDB a small Gaussian per joint.
 3. Propagate (`label_propagation`): each cell of frame t takes the soft labels of its top-k
    cells, jointly over frame 0 and a queue of the `n_context` latest (features, predicted labels),
    weighted by the softmax of affinity = <features> / temperature. A queued frame's cells count
    only within `radius` grid cells (Euclidean, strict <), frame 0's anywhere; the queue starts as
    n_context copies of frame 0, and each prediction enters it.
 4. Read out: DAVIS/VIP upsampled to the task resolution, argmax, then to the native size; JHMDB
    each joint at the weighted mean of the top-5 cells of its map.
 5. Score. DAVIS: J (region IoU) and F (boundary F-measure) exactly as the DAVIS-2017 toolkit
    computes them, at native resolution, without the first and last frames, averaged per object,
    then over all objects: J-Mean, F-Mean and their mean J&F-Mean. VIP: mIoU of one confusion
    matrix over 20 classes, all frames of all videos. JHMDB: PCK@0.1 (`pck`).

`--long_horizon` (Fig. 4) scores the DAVIS videos of at least 80 frames on their first
16/32/48/64/80 frames, relative to the first 16. Features and propagation are causal,
so the first N frames' predictions are those of the video cut to N frames: one pass serves all.
For example (--task=jhmdb and vip alike):

    python eval_labelprop.py --task=davis --data=data/DAVIS --ckpt=out/rvm-s/ckpt.pt
    python eval_labelprop.py --task=davis --data=data/DAVIS --ckpt=rvm_s.npz --features=encoder
    python eval_labelprop.py --task=davis --data=data/DAVIS --untrained=configs/s.py  # a baseline
    python eval_labelprop.py --task=davis --data=data/DAVIS --ckpt=out/rvm-s/ckpt.pt --long_horizon

out/rvm-s/ckpt.pt is what `python train.py configs/s.py` writes; rvm_s.npz stands for the authors'
released weights. The datasets -- DAVIS-2017 val at 480p (https://davischallenge.org), JHMDB
(http://jhmdb.is.tue.mpg.de), VIP_Fine (Video Instance-level Parsing; the authors' notebook says
where to get it) -- in their usual layouts:
    DAVIS  JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/*.png (palette),
           ImageSets/2017/val.txt
    VIP    Images/<video>/*.jpg, Annotations/Category_ids/<video>/*.png, lists/val_videos.txt
    JHMDB  Rename_Images/<class>/<video>/*.png,
           joint_positions/<class>/<video>/joint_positions.mat,
           splits/<class>_test_split1.txt (label 2 = test)
"""
import argparse
import csv
import math
import os
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # no pyplot: plots go straight to files, no display needed
from PIL import Image
from tqdm import tqdm

from data import image_names, read_frames
from model import MAX_TOKENS, RVMConfig, named_model, run_script

# Supplement Table 8, per task: the resolution frames are resized to, and label_propagation's
# settings (n_context 20 for all three, as the table says; §11.2's text says one for JHMDB, VIP).
RESOLUTION = {"davis": (480, 880), "jhmdb": (320, 320), "vip": (448, 880)}
PROPAGATION = {task: dict(topk=topk, n_context=20, temperature=0.7, radius=20)
               for task, topk in [("davis", 7), ("jhmdb", 7), ("vip", 10)]}
VIP_CLASSES = ["background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat",
               "socks", "pants", "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm",
               "left-arm", "right-leg", "left-leg", "right-shoe", "left-shoe"]
JHMDB_JOINTS = 15


# Step 1: the videos and their features. Each reader checks the whole layout first: a missing
# folder, a count mismatch or a wrong mask format is an error naming the path, raised before any
# model work.


def _require(path, what, is_file=False):
    if not (os.path.isfile(path) if is_file else os.path.isdir(path)):
        raise FileNotFoundError(f"{what} not found: {path}")


def _pick(names, sequences, source):
    """The video names listed in `source`, cut to `sequences` (in the list's order) when given."""
    if not names:
        raise ValueError(f"no videos in {source}")
    unknown = [s for s in sequences or [] if s not in names]
    if unknown:
        raise ValueError(f"--sequences {unknown} are not in {source}")
    return [n for n in names if n in sequences] if sequences else names


def _read_masked(root, dataset, list_file, frames_dir, masks_dir, sequences):
    """DAVIS or VIP: per listed video {'name', 'frame_dir', 'n' (frames), 'mask_paths' (pngs)},
    its frames and masks checked for the same count, names and sizes, and the masks' mode."""
    _require(root, f"{dataset} folder")
    list_path = os.path.join(root, list_file)
    _require(list_path, f"{dataset} video list", is_file=True)
    listed = [n.strip() for n in Path(list_path).read_text().splitlines() if n.strip()]
    names = _pick(listed, sequences, list_path)
    if dataset == "DAVIS":  # object indices
        modes, expected = ("P",), "a palette PNG of object indices"
    else:  # VIP: class ids, grey or palette
        modes, expected = ("L", "P"), "L or P"
    videos = []
    for name in names:
        frame_dir = os.path.join(root, frames_dir, name)
        mask_dir = os.path.join(root, masks_dir, name)
        _require(frame_dir, f"frames of {name!r} (listed in {list_path})")
        _require(mask_dir, f"labels of {name!r} (listed in {list_path})")
        frames = [os.path.join(frame_dir, n) for n in image_names(frame_dir)]
        mask_paths = [os.path.join(mask_dir, n) for n in image_names(mask_dir)]
        if not frames:
            raise ValueError(f"no frames in {frame_dir}")
        if len(frames) != len(mask_paths):
            raise ValueError(f"{len(frames)} frames in {frame_dir} but {len(mask_paths)} masks in "
                             f"{mask_dir}: scoring needs a ground-truth mask for every frame")
        for frame, mask in zip(frames, mask_paths, strict=True):
            if Path(frame).stem != Path(mask).stem:
                raise ValueError(f"frame {frame} has no mask of its name in {mask_dir}")
            with Image.open(mask) as m, Image.open(frame) as im:  # lazy: headers only
                if m.mode not in modes:
                    raise ValueError(f"mask {mask} is a mode-{m.mode!r} image; expected {expected}")
                if m.size != im.size:
                    raise ValueError(f"mask {mask} is {m.size[0]}x{m.size[1]} but frame {frame} is "
                                     f"{im.size[0]}x{im.size[1]}")
        videos.append(dict(name=name, frame_dir=frame_dir, n=len(frames), mask_paths=mask_paths))
    return videos


def read_davis(root, sequences=None):
    """DAVIS-2017 val: per sequence {'name', 'frame_dir', 'n' (frames), 'mask_paths'}."""
    videos = _read_masked(root, "DAVIS", "ImageSets/2017/val.txt", "JPEGImages/480p",
                          "Annotations/480p", sequences)
    for v in videos:
        first = read_mask(v["mask_paths"][0])
        if not ((first > 0) & (first < 255)).any():
            raise ValueError(f"first-frame annotation {v['mask_paths'][0]} has no object to "
                             "propagate")
    return videos


def read_vip(root, sequences=None):
    """VIP (the VIP_Fine layout, as the notebook reads it): frames and part-label maps (class ids
    0..19)."""
    return _read_masked(root, "VIP", "lists/val_videos.txt", "Images", "Annotations/Category_ids",
                        sequences)


def read_jhmdb(root, sequences=None):
    """JHMDB split-1 test videos: per video {'name', 'frame_dir', 'n', 'joints' [T, 15, 2] (x, y)
    in 0-based pixels}; joint_positions.mat holds them as 'pos_img' [2, 15, T] in MATLAB's 1-based
    pixels."""
    _require(root, "JHMDB folder")
    split_dir = os.path.join(root, "splits")
    _require(split_dir, "JHMDB split lists")
    suffix = "_test_split1.txt"
    names = []
    for split in sorted(f for f in os.listdir(split_dir) if f.endswith(suffix)):
        with open(os.path.join(split_dir, split)) as f:  # <video>.avi 1 (train) or 2 (test)
            for line in f:
                if line.strip() and line.split()[1] == "2":
                    video = os.path.splitext(line.split()[0])[0]
                    names.append(f"{split[:-len(suffix)]}/{video}")
    names = _pick(names, sequences, f"the test lists {split_dir}/<class>{suffix}")
    try:
        import scipy.io  # only JHMDB needs it
    except ImportError:
        raise ImportError("reading JHMDB's joint_positions.mat needs scipy: pip install "
                          "scipy") from None
    videos = []
    for name in names:
        frame_dir = os.path.join(root, "Rename_Images", name)
        path = os.path.join(root, "joint_positions", name, "joint_positions.mat")
        _require(frame_dir, f"frames of video {name!r} (listed in {split_dir})")
        _require(path, f"joints of video {name!r}", is_file=True)
        try:
            pos = scipy.io.loadmat(path)["pos_img"]
        except Exception as err:  # noqa: BLE001 -- any unreadable file: the same clear message
            raise ValueError(f"{path}: cannot read 'pos_img' ({type(err).__name__}: "
                             f"{err})") from None
        if pos.ndim != 3 or pos.shape[:2] != (2, JHMDB_JOINTS):
            raise ValueError(f"{path}: 'pos_img' has shape {pos.shape}; expected "
                             f"(2, {JHMDB_JOINTS}, T)")
        n = len(image_names(frame_dir))
        if n == 0 or pos.shape[2] != n:
            raise ValueError(f"{n} frames in {frame_dir} but {pos.shape[2]} in {path}")
        joints = pos.astype(np.float32).transpose(2, 1, 0) - 1
        videos.append(dict(name=name, frame_dir=frame_dir, n=n, joints=joints))
    return videos


def read_video(video, size):
    """A video's frames as uint8 [T, H, W, 3] at size = (H, W), Lanczos (the notebook's
    mediapy.resize_video), and their native (H0, W0)."""
    frames = read_frames(video["frame_dir"], range(video["n"]))
    native = frames.shape[1:3]
    if native == tuple(size):
        return frames, native
    lanczos = Image.Resampling.LANCZOS
    resized = [np.asarray(Image.fromarray(f).resize(size[::-1], lanczos)) for f in frames]
    return np.stack(resized), native


def read_mask(path):
    """A label map as uint8 [H, W]: the palette indices of a palette PNG, or the grey values."""
    with Image.open(path) as im:
        return np.array(im)


def model_features(model, frames, per_frame=False, device="cpu"):
    """frames uint8 [T, H, W, 3] -> L2-normalised patch features [T, h, w, C] on the CPU: o_t
    (per_frame: the encoder's ê_t, no recurrence)."""
    video = (torch.from_numpy(f).to(device).permute(2, 0, 1) / 255 for f in frames)
    return F.normalize(model.stream_features(video, per_frame), dim=-1).cpu()


# Steps 2-4: first-frame labels on the feature grid, propagation, read-out.


def mask_to_labels(mask, size, grid, values=None):
    """Step 2 for a label map [H0, W0]: soft labels [h, w, K] and the K label values (default:
    those present) they stand for; the map nearest-resized to `size`, then bilinearly to `grid`
    (the notebook's cv2 INTER_NEAREST, INTER_LINEAR: torch's, without antialias)."""
    values = np.unique(mask) if values is None else np.asarray(values)
    m = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")[0, 0]
    onehot = (m[None] == torch.from_numpy(values.astype(np.float32))[:, None, None]).float()
    soft = F.interpolate(onehot[None], size=grid, mode="bilinear", align_corners=False)[0]
    return soft.permute(1, 2, 0).contiguous(), values


def _gaussian(h, w, x, y, sigma=0.5):
    """A 2-D Gaussian at (x, y) on an h x w grid, drawn as the reference code (pose-hg-train's
    draw.py, via UVC, CRW and the authors' notebook) draws it: a (6 sigma + 1)^2 patch from corner
    ul to br, placed at integer offsets with int() truncating toward zero, clipped to the grid."""
    ul = [int(x - 3 * sigma), int(y - 3 * sigma)]
    br = [int(x + 3 * sigma + 1), int(y + 3 * sigma + 1)]
    c = (6 * sigma + 1) // 2
    dx, dy = np.arange(w) - ul[0], np.arange(h) - ul[1]  # each cell's offset in the patch
    g = np.exp(-((dx[None, :] - c) ** 2 + (dy[:, None] - c) ** 2) / (2 * sigma ** 2))
    inside_x = (dx >= 0) & (dx < br[0] - ul[0])
    inside_y = (dy >= 0) & (dy < br[1] - ul[1])
    return np.where(inside_x[None, :] & inside_y[:, None], g, 0).astype(np.float32)


def pose_to_labels(joints, grid, native_size, sigma=0.5):
    """Step 2 for joints [J, 2] (x, y) in native pixels: soft labels [h, w, J + 1], channel 1 + j a
    Gaussian (sigma in grid cells) at joint j's grid position, channel 0 the background: 1 where
    no joint has mass."""
    (h, w), (H0, W0) = grid, native_size
    labels = np.zeros((h, w, len(joints) + 1), np.float32)
    for j, (x, y) in enumerate(joints):
        labels[..., j + 1] = _gaussian(h, w, x * w / W0, y * h / H0, sigma)
    labels[..., 0] = labels.sum(-1) == 0
    return torch.from_numpy(labels)


def label_propagation(feats, labels, n_context, temperature, topk, radius, chunk_size=None,
                      device=None, progress=None):
    """Step 3: features [T, h, w, C] (moved to `device` a frame at a time) and frame 0's soft
    labels [h, w, K] -> soft predictions [T, h, w, K] on the CPU. Unlike the authors' notebook,
    frame 0 keeps its given labels: its loop also updates at t = 0: one queued copy of frame 0
    becomes its self-propagated (smoothed) labels, output for frame 0."""
    T, h, w, C = feats.shape
    N, K = h * w, labels.shape[-1]
    if labels.shape[:2] != (h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match the feature grid {h}x{w}")
    device = feats.device if device is None else torch.device(device)
    # far[q, c]: context cell c of a queued frame is too far from query cell q (frame 0 is exempt).
    # Squared integer distances against radius^2: the same as the notebook's sqrt(d2) < radius.
    pos = torch.cartesian_prod(torch.arange(h), torch.arange(w))  # [N, 2], row-major as the cells
    far = (((pos[:, None] - pos[None]) ** 2).sum(-1) >= radius ** 2).to(device)  # [N, N]
    # Query cells go in chunks of ~64 MB of affinities (DAVIS's 30x55: 1650 x 21 frames x 1650).
    chunk_size = chunk_size or max(1, 2 ** 24 // ((n_context + 1) * N))

    first = (feats[0].reshape(N, C).to(device, torch.float32),
             labels.reshape(N, K).to(device, torch.float32))
    queue = deque([first] * n_context, maxlen=n_context)  # the oldest pair drops out on append
    preds = [labels.reshape(N, K).float().cpu()]
    for t in range(1, T):
        ctx_feats = torch.stack([first[0]] + [f for f, _ in queue])  # [1 + n, N, C]
        ctx_labels = torch.cat([first[1]] + [lab for _, lab in queue])  # [(1 + n) N, K]
        k = min(topk, ctx_labels.shape[0])
        query = feats[t].reshape(N, C).to(device, torch.float32)
        pred = torch.empty(N, K, device=device)
        for s in range(0, N, chunk_size):
            cells = slice(s, s + chunk_size)
            # [chunk, 1 + n, N]
            aff = torch.einsum("qc,fnc->qfn", query[cells], ctx_feats) / temperature
            aff[:, 1:].masked_fill_(far[cells, None, :], float("-inf"))
            weights, idx = aff.flatten(1).topk(k, dim=1)  # jointly over all context cells
            pred[cells] = torch.einsum("qk,qkl->ql", weights.softmax(dim=1), ctx_labels[idx])
        queue.append((query, pred))
        preds.append(pred.cpu())
        if progress is not None:
            progress.update()
    return torch.stack(preds).reshape(T, h, w, K)


def labels_to_mask(soft, values, size, native_size):
    """Step 4: soft labels [h, w, K] -> label map uint8 [H0, W0]: bilinear to `size`, argmax,
    nearest-exact to `native_size` (the notebook's cv2 INTER_LINEAR, NEAREST_EXACT)."""
    x = F.interpolate(soft.permute(2, 0, 1)[None].float(), size=size, mode="bilinear",
                      align_corners=False)
    label = torch.from_numpy(np.asarray(values, np.float32))[x[0].argmax(0)]
    label = F.interpolate(label[None, None], size=native_size, mode="nearest-exact")[0, 0]
    return label.numpy().astype(np.uint8)


def labels_to_pose(soft, native_size, topk=5):
    """Step 4: soft labels [T, h, w, 1 + J] -> joints [T, J, 2] (x, y) in native pixels, scaled by
    native size / grid size as in the reference, and visible [T, J]: a joint whose map is all zero
    is invisible (-1)."""
    (T, h, w, _), (H0, W0) = soft.shape, native_size
    flat = soft[..., 1:].reshape(T, h * w, -1)  # drop the background channel
    vals, ids = flat.topk(topk, dim=1)  # [T, topk, J]
    vals = vals / vals.sum(1, keepdim=True).clamp_min(1e-30)
    x = ((ids % w).float() * vals).sum(1) / w * W0
    y = ((ids // w).float() * vals).sum(1) / h * H0
    visible = flat.sum(1) > 0
    joints = torch.stack([x, y], dim=-1)
    joints[~visible] = -1
    return joints.numpy(), visible.numpy()


# Step 5: the metrics. J and F follow davis2017-evaluation's davis2017/metrics.py line by line,
# with numpy only (tests/test_labelprop.py checks them against the toolkit's published per-frame
# scores). The toolkit replaces the void label 255 by background before it builds its void mask,
# so that mask is always empty; here 255 is background and there is no void mask at all.


def _mask_pair(gt, pred):
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    return gt, pred


def davis_j(gt, pred):
    """Region similarity J (IoU) per frame, masks [T, H, W] -> [T] ([H, W] -> a float); empty and
    empty score 1."""
    gt, pred = _mask_pair(gt, pred)
    inter = (gt & pred).sum(axis=(-2, -1))
    union = (gt | pred).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def seg2bmap(seg):
    """1-pixel-wide boundary of a binary mask: pixels that differ from their east, south or
    south-east neighbour (the toolkit's _seg2bmap, with the last row and column as it handles
    them)."""
    seg = np.asarray(seg, bool)
    e = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s = np.zeros_like(seg)
    s[:-1, :] = seg[1:, :]
    se = np.zeros_like(seg)
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def dilate_disk(mask, r):
    """Binary dilation by skimage.morphology.disk(r), the offsets with dx^2 + dy^2 <= r^2, exactly
    as the toolkit's cv2.dilate (pixels outside the image count as empty). For each row offset dy,
    dilate every row horizontally by the disk's half-width there (a running sum finds "any pixel
    within +-half") and shift the result by dy."""
    H, W = mask.shape
    out = np.zeros((H, W), bool)
    csum = np.zeros((H, W + 1), np.int32)
    np.cumsum(mask, axis=1, out=csum[:, 1:])
    x = np.arange(W)
    for dy in range(-r, r + 1):
        half = math.isqrt(r * r - dy * dy)
        row = (csum[:, np.minimum(x + half + 1, W)] - csum[:, np.maximum(x - half, 0)]) > 0
        out[max(-dy, 0):H - max(dy, 0)] |= row[max(dy, 0):H - max(-dy, 0)]
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
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def davis_f(gt, pred, bound_th=0.008):
    """Contour accuracy F (boundary F-measure) per frame, masks [T, H, W] -> [T] ([H, W] -> a
    float): a boundary pixel matches if the other mask's boundary lies within the disk tolerance."""
    gt, pred = _mask_pair(gt, pred)
    if gt.ndim == 2:
        return _f_frame(gt, pred, bound_th)
    return np.array([_f_frame(g, p, bound_th) for g, p in zip(gt, pred, strict=True)])


def davis_summary(rows, n_frames=None):
    """J-Mean, F-Mean and J&F-Mean over all objects, each on frames 1..T-2 of its video (or of its
    first n_frames)."""
    def mean(key):
        return float(np.mean([np.mean(r[key][:(n_frames or r["n_frames"]) - 2]) for r in rows]))

    j, f = mean("j"), mean("f")
    return dict(jf=(j + f) / 2, j=j, f=f)


def confusion(gt, pred, n_classes=20):
    """Confusion matrix [n, n], rows ground truth, columns prediction; labels outside 0..n-1 (255)
    are ignored."""
    gt = np.asarray(gt).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = (gt >= 0) & (gt < n_classes) & (pred >= 0) & (pred < n_classes)
    counts = np.bincount(n_classes * gt[keep] + pred[keep], minlength=n_classes ** 2)
    return counts.reshape(n_classes, n_classes)


def miou(hist):
    """(mIoU, per-class IoU) of a confusion matrix, IoU = TP / (GT + predicted - TP); 0 / 0 is left
    out of the mean."""
    hist = np.asarray(hist, np.float64)
    tp = np.diag(hist)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (hist.sum(1) + hist.sum(0) - tp)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"), iou


def pck(gt, pred, visible=None, threshold=0.1):
    """PCK as UVC's eval_pck.py and the authors' notebook compute it: lists over videos (or one
    video) of joints [T, J, 2] and visible [T, J] (default all; the reference passes the
    *predicted* joints' visibility). Frames t >= 1 count; a joint is correct within threshold x
    0.6 x the diagonal of the visible ground-truth joints' bounding box. Returns (mean over joints,
    per-joint PCK, each pooling its frames of all videos)."""
    if isinstance(gt, np.ndarray) and gt.ndim == 3:  # one video
        gt, pred = [gt], [pred]
        if visible is not None:
            visible = [visible]
    if visible is None:
        visible = [np.ones(g.shape[:2], bool) for g in gt]
    dists = [[] for _ in range(gt[0].shape[1])]  # per joint
    for g, p, vis in zip(gt, pred, visible, strict=True):
        g = np.asarray(g, np.float64)
        p = np.asarray(p, np.float64)
        vis = np.asarray(vis, bool)
        for t in range(1, len(g)):
            if not vis[t].any():
                continue
            pts = g[t, vis[t]]
            scale = 0.6 * np.linalg.norm(pts.max(0) - pts.min(0))
            for j in np.nonzero(vis[t])[0]:
                dists[j].append(np.linalg.norm(p[t, j] - g[t, j]) / scale)
    per_joint = np.array([np.mean(np.array(d) <= threshold) if d else np.nan for d in dists])
    return float(np.nanmean(per_joint)), per_joint


# Evaluation, the report and the command line.


def _grid(size, patch):
    if size[0] % patch or size[1] % patch:
        raise ValueError(f"--resolution {size[0]} {size[1]} is not a multiple of the patch size "
                         f"{patch}")
    return size[0] // patch, size[1] // patch


def _save_masks(folder, names, preds, palette=None):
    os.makedirs(folder, exist_ok=True)
    for name, p in zip(names, preds, strict=True):
        im = Image.fromarray(p)
        if palette:
            im.putpalette(palette)  # an 'L' image with a palette becomes a 'P' one, as DAVIS's
        im.save(os.path.join(folder, os.path.basename(name)))


def propagate_and_score(task, videos, extract, resolution, patch_size=RVMConfig.patch_size,
                        prop=None, out_dir=None, save_masks=False, say=tqdm.write):
    """Steps 1-5, video by video: a row per DAVIS object (its J and F of frames 1..T-1, 'j' and
    'f'; the last frame is dropped when means are taken), per VIP video (its confusion matrix over
    all frames, 'hist', as the notebook pools them, and mIoU) or per JHMDB video (the joints 'gt'
    and 'pred' [T, 15, 2], 'visible' [T, 15], PCK@0.1). extract: frames uint8 [T, H, W, 3] ->
    features [T, h, w, C]; prop: label_propagation's settings over Table 8's."""
    grid = _grid(resolution, patch_size)
    prop = {**PROPAGATION[task], **(prop or {})}
    rows = []
    for video in videos:
        frames, native = read_video(video, resolution)
        if task == "jhmdb":
            labels = pose_to_labels(video["joints"][0], grid, native)
        else:
            gt = np.stack([read_mask(m) for m in video["mask_paths"]])
            if task == "davis":
                gt[gt == 255] = 0  # the toolkit reads void as background
            values = np.unique(gt[0])
            if task == "vip":  # VIP's 255 gets no channel
                values = [v for v in values if v < len(VIP_CLASSES)]
            labels, values = mask_to_labels(gt[0], resolution, grid, values)
        # one bar: step 1's features, then step 3's propagation
        with tqdm(total=2 * len(frames) - 1, desc=video["name"], leave=False) as bar:
            features = extract(frames)
            bar.update(len(frames))
            soft = label_propagation(features, labels, progress=bar, **prop)
        if task == "jhmdb":
            joints, visible = labels_to_pose(soft, native)
            score = pck(video["joints"], joints, visible)[0]
            rows.append(dict(video=video["name"], n_frames=len(frames), gt=video["joints"],
                             pred=joints, visible=visible, pck=score))
            say(f"{video['name']}: PCK@0.1 {score:.3f}  ({len(frames)} frames)")
            continue
        pred = np.stack([labels_to_mask(s, values, resolution, gt.shape[1:]) for s in soft])
        if save_masks and out_dir:
            with Image.open(video["mask_paths"][0]) as im:
                palette = im.getpalette() if task == "davis" else None
            folder = os.path.join(out_dir, "masks", video["name"])
            _save_masks(folder, video["mask_paths"], pred, palette)
        if task == "vip":
            hist = sum(confusion(g, p, len(VIP_CLASSES)) for g, p in zip(gt, pred, strict=True))
            score = miou(hist)[0]
            rows.append(dict(video=video["name"], n_frames=len(gt), hist=hist, miou=score))
            say(f"{video['name']}: mIoU {score:.3f}  ({len(gt)} frames)")
            continue
        # objects as the toolkit counts them: 1 .. the largest index
        for obj in range(1, int(gt[0].max()) + 1):
            g, p = gt[1:] == obj, pred[1:] == obj
            j, f = davis_j(g, p), davis_f(g, p)
            rows.append(dict(sequence=video["name"], object=obj, n_frames=len(gt), j=j, f=f))
            say(f"{video['name']}_{obj}: J {j[:-1].mean():.3f}  F {f[:-1].mean():.3f}  "
                f"({len(gt)} frames)")
    return rows


def _write_csv(path, header, rows):
    """A CSV file, numbers to 4 decimals."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row])


def report_davis(rows, out_dir, horizons=None, label="RVM"):
    """DAVIS's per-object CSV and, with `horizons`, paper Fig. 4's table and plot: J&F on the first
    N frames, relative to the first horizon. Returns the result line."""
    n_videos = len({r["sequence"] for r in rows})
    if horizons:
        table = [(n, davis_summary(rows, n)) for n in horizons]
        relative = [s["jf"] / table[0][1]["jf"] for _, s in table]
        header = ["frames", "J&F-Mean", "J-Mean", "F-Mean", f"J&F relative to {horizons[0]}"]
        cells = [[n, s["jf"], s["j"], s["f"], r] for (n, s), r in zip(table, relative, strict=True)]
        _write_csv(os.path.join(out_dir, "long_horizon.csv"), header, cells)
        ax = Figure(figsize=(4.5, 3.5)).subplots()
        ax.plot(horizons, relative, "o-", label=label)
        ax.set(xlabel="number of frames", ylabel=f"J&F relative to {horizons[0]} frames",
               xticks=horizons)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.figure.tight_layout()
        ax.figure.savefig(os.path.join(out_dir, "long_horizon.png"), dpi=150)
        print(f"long horizon, {n_videos} videos of >= {horizons[-1]} frames:")
        for (n, s), r in zip(table, relative, strict=True):
            print(f"  {n:3d} frames  J&F-Mean {s['jf']:.3f}  relative {r:.3f}")
    per_object = []
    for r in rows:
        j, f = np.mean(r["j"][:-1]), np.mean(r["f"][:-1])
        per_object.append([r["sequence"], r["object"], r["n_frames"], j, f, (j + f) / 2])
    header = ["sequence", "object", "frames", "J-Mean", "F-Mean", "J&F-Mean"]
    _write_csv(os.path.join(out_dir, "davis_per_sequence.csv"), header, per_object)
    s = davis_summary(rows)  # the videos are cut to the last horizon already
    return (f"J&F-Mean {s['jf']:.3f}  J-Mean {s['j']:.3f}  F-Mean {s['f']:.3f}  "
            f"({len(rows)} objects in {n_videos} sequences)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Label propagation on DAVIS-2017, JHMDB or VIP "
                                "(supplement §11.2). Settings are written --name=value.")
    p.add_argument("--task", required=True, choices=sorted(RESOLUTION))
    p.add_argument("--data", required=True,
                   help="the dataset's folder (layouts: the docstring of this file)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="weights: a train.py checkpoint (.pt) or the authors' .npz")
    src.add_argument("--untrained", metavar="CONFIG",
                     help="the untrained baseline: a random model of a config's size")
    p.add_argument("--seed", type=int, default=0, help="seeds --untrained's initialisation")
    p.add_argument("--features", default="core", choices=["core", "encoder"],
                   help="core: the recurrent core's output (RVM); encoder: the per-frame "
                   "encoder's (an image model)")
    p.add_argument("--resolution", type=int, nargs=2, metavar=("H", "W"),
                   help="task resolution (default per task)")
    p.add_argument("--topk", type=int, help="neighbours (default: the task's, supplement Table 8)")
    p.add_argument("--temperature", type=float, help="of the affinities (default: the task's)")
    p.add_argument("--n_context", type=int,
                   help="queued context frames besides frame 0 (default: the task's)")
    p.add_argument("--radius", type=float,
                   help="search radius in grid cells for queued frames (default: the task's)")
    p.add_argument("--max_frames", type=int, help="use only the first N frames of each video")
    p.add_argument("--sequences", help="comma-separated video names (default: all in the list)")
    p.add_argument("--long_horizon", action="store_true",
                   help="DAVIS: paper Fig. 4 (the first 16..80 frames)")
    p.add_argument("--horizons", default="16,32,48,64,80", help="frame counts for --long_horizon")
    p.add_argument("--out_dir", help="folder for the CSVs, masks and plots (default "
                   "out/labelprop/<task>-<model>-<features>-<resolution>)")
    p.add_argument("--save_masks", action="store_true",
                   help="DAVIS/VIP: write the predicted masks as PNGs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    args.sequences = [s for s in args.sequences.split(",") if s] if args.sequences else None
    args.horizons = sorted(int(n) for n in args.horizons.split(",")) if args.long_horizon else None
    for key in ("topk", "temperature", "n_context", "radius"):
        if getattr(args, key) is None:  # unset: the task's (--topk=0 is an error, not unset)
            setattr(args, key, PROPAGATION[args.task][key])
    args.resolution = tuple(args.resolution or RESOLUTION[args.task])
    if args.n_context < 0 or args.topk < 1 or args.temperature <= 0:
        raise ValueError("need --n_context >= 0, --topk >= 1 and --temperature > 0")
    if args.long_horizon and (args.task != "davis" or args.horizons[0] < 3 or args.max_frames):
        raise ValueError("--long_horizon is the DAVIS experiment of paper Fig. 4 (--task=davis), "
                         "on --horizons of >= 3 frames (first and last are not scored; got "
                         f"{args.horizons}), without --max_frames")
    if args.max_frames and args.max_frames < (3 if args.task == "davis" else 2):
        raise ValueError("--max_frames is too small to leave a frame to score")
    return args


def load_videos(args):
    """Read and check the whole dataset; keep the videos long enough for --long_horizon, and cut
    each to its first --max_frames frames (--long_horizon: the largest of --horizons)."""
    read = dict(davis=read_davis, jhmdb=read_jhmdb, vip=read_vip)[args.task]
    videos = read(args.data, args.sequences)
    n = args.horizons[-1] if args.long_horizon else args.max_frames
    videos = [v for v in videos if not args.long_horizon or v["n"] >= n]
    if not videos:
        raise ValueError(f"no video in {args.data} has the {n} frames --long_horizon needs")
    if not n:
        return videos
    cut = []
    for v in videos:
        kept = {k: v[k][:n] for k in ("mask_paths", "joints") if k in v}
        cut.append(dict(v, n=min(v["n"], n), **kept))
    return cut


def main(argv=None):
    args = parse_args(argv)
    videos = load_videos(args)  # every file checked before any model work
    model, name = named_model(args.ckpt, args.untrained, args.seed)
    model = model.to(args.device)
    P = model.config.patch_size
    H, W = args.resolution
    out = args.out_dir or os.path.join("out", "labelprop",
                                       f"{args.task}-{name}-{args.features}-{H}x{W}")
    h, w = _grid(args.resolution, P)
    if h * w > MAX_TOKENS:
        raise ValueError(f"--resolution {H} {W} with this model's patch size {P} is {h * w} tokens "
                         "per frame: far too many for label propagation (the paper's 480x880 at "
                         "patch 16 is 1650); lower --resolution")
    prop = {k: getattr(args, k) for k in ("n_context", "temperature", "topk", "radius", "device")}
    weights = args.ckpt or f"untrained {args.untrained}"
    print(f"{args.task}: {len(videos)} videos at {H}x{W}, {weights}, {args.features} features, "
          f"n_context {args.n_context}, temperature {args.temperature}, top-k {args.topk}, "
          f"radius {args.radius:g}")
    os.makedirs(out, exist_ok=True)
    per_frame = args.features == "encoder"
    extract = lambda frames: model_features(model, frames, per_frame, args.device)
    rows = propagate_and_score(args.task, videos, extract, args.resolution, P, prop, out,
                               args.save_masks)
    if args.task == "davis":
        line = report_davis(rows, out, args.horizons, f"{args.features} features")
    elif args.task == "vip":
        m, per_class = miou(sum(r["hist"] for r in rows))
        per_video = [[r["video"], r["n_frames"], r["miou"]] for r in rows]
        _write_csv(os.path.join(out, "vip_per_video.csv"), ["video", "frames", "mIoU"], per_video)
        _write_csv(os.path.join(out, "vip_per_class.csv"), ["class", "IoU"],
                   zip(VIP_CLASSES, per_class, strict=True))
        line = f"mIoU {m:.3f}  ({len(videos)} videos, {len(VIP_CLASSES)} classes)"
    else:
        joints = [[r[k] for r in rows] for k in ("gt", "pred", "visible")]
        per_video = [[r["video"], r["n_frames"], r["pck"]] for r in rows]
        _write_csv(os.path.join(out, "jhmdb_per_video.csv"), ["video", "frames", "PCK@0.1"],
                   per_video)
        line = (f"PCK@0.1 {pck(*joints, 0.1)[0]:.3f}  PCK@0.2 {pck(*joints, 0.2)[0]:.3f}  "
                f"({len(videos)} videos)")
    print(line)
    Path(out, f"{args.task}_result.txt").write_text(line + "\n")
    print(f"wrote {out}/")
    return line


if __name__ == "__main__":
    run_script(main, "eval_labelprop.py", (ValueError, OSError, ImportError))
