"""Look at what RVM's features see: PCA and K-means of a whole video's patch features (supplement
§13), and the white-noise square of §4.4 (Fig. 6), scored.

    python visualize.py --video=clip.mp4 --ckpt=out/rvm-s/ckpt.pt  # a video file of yours
    python visualize.py --video=frames/ --ckpt=rvm_l.npz  # a folder of frames; the authors' weights
    python visualize.py --demo --ckpt=out/noise_square/ckpt.pt     # the noise square, scored
    python visualize.py --demo --ckpt=rvm_l.npz                    # Fig. 6: 512 x 512, T = 64

The model is unrolled over the video a frame at a time: its cost per frame does not grow with the
video's length, but the whole video and its features are held in memory. PCA and K-means are
fitted once over all its patch features, so a colour means the same in every frame, which is what
shows temporal (in)stability (Fig. 8). Written: input | PCA | K-means as a GIF and an MP4, and a
PNG strip of chosen frames like the paper's figures. In the demo every frame alone is white noise,
only the square's motion gives it away; it scores ONE K-means cluster per video against the square
for the model, its encoder alone, an untrained model and two controls (the video without the
square; patch positions alone), and outlines the true square.
"""

import argparse
import math
import os
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import DIRECTIONS, count_frames, noise_square_video, read_frames
from model import MAX_TOKENS, RVM, named_model, run_script

# One colour per K-means cluster (tab10 without its grey); more clusters cycle.
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207]], dtype=np.uint8)
# The demo scores the frames after those a training clip's source holds (§4.1: 4 source frames).
N_SOURCE = 4


# Frames and features.


def load_video(path, patch_size, image_size=None, max_frames=None):
    """A video file or a folder of frames -> float [T, 3, H, W] in [0, 1], resized (bilinear,
    antialiased) to image_size (an int, square) or else down to whole patches."""
    frames = range(min(count_frames(path), max_frames)) if max_frames else None
    video = torch.from_numpy(read_frames(path, frames)).permute(0, 3, 1, 2).float() / 255
    H, W = video.shape[-2:]
    P = patch_size
    if image_size:
        size = (image_size, image_size)
    else:  # down to whole patches
        size = (max(P, H // P * P), max(P, W // P * P))
    if size[0] % P or size[1] % P:
        raise ValueError(f"--image_size={image_size} is not a multiple of the patch size {P}")
    if size != (H, W):
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True,
                              align_corners=False).clamp(0, 1)
    return video


def without_square(video, masks, seed=0):
    """The stimulus without its square: each pixel from a frame where the square does not cover
    it; pixels covered in every frame get fresh uniform noise, which is what the background is made
    of."""
    first_free = (~masks).float().argmax(0)  # the first frame where each pixel is background
    background = torch.gather(video, 0, first_free[None, None].expand(1, 3, -1, -1))[0]
    generator = torch.Generator().manual_seed(seed + 1)
    fresh = torch.randint(0, 256, background.shape, generator=generator)
    background = torch.where(masks.all(0)[None], fresh.to(video.dtype), background)
    return background[None].expand_as(video).clone()


def unroll(model, video, per_frame=False, device="cpu", progress=True):
    """float [T, 3, H, W] -> patch features o_t [T, h, w, D], the model streamed a frame at a time
    (frame t never sees a later frame; per_frame: the encoder's ê_t)."""
    model = model.to(device).eval()
    frames = tqdm(video, desc="features", unit="frame", disable=not progress, leave=False)
    return model.stream_features((f.to(device) for f in frames), per_frame)


# PCA and K-means, in torch (supplement §13), on the GPU when there is one.


def pca(x, n_components=3):
    """x [M, D] -> (whitened scores [M, n], components [n, D], variances [n]), in float64. Each
    component's largest loading is made positive: the same features, the same colours."""
    x = x.double()
    xc = x - x.mean(0)
    var, vecs = torch.linalg.eigh(xc.T @ xc / max(1, x.shape[0] - 1))  # ascending
    var = var.flip(0)[:n_components]
    vecs = vecs.flip(1)[:, :n_components].T
    vecs = vecs * torch.sign(vecs.gather(1, vecs.abs().argmax(1, keepdim=True)))
    return (xc @ vecs.T / var.clamp(min=1e-12).sqrt()).float(), vecs.float(), var.float()


def pca_rgb(features, n_sigma=2.0):
    """features [..., D] -> RGB [..., 3]: the top 3 whitened components over all tokens, ±n_sigma
    to [0, 1]."""
    scores = pca(features.reshape(-1, features.shape[-1]), 3)[0]
    scores = F.pad(scores, (0, 3 - scores.shape[1]))  # fewer than 3 feature dimensions: mid-grey
    return (0.5 + scores / (2 * n_sigma)).clamp(0, 1).reshape(*features.shape[:-1], 3)


def _sq_dists(x, centers):
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(1)
    return d.clamp(min=0)


def kmeans_pp(x, k, generator):
    """k-means++ seeding, the greedy variant scikit-learn uses: each new centre is the best of
    2 + ln(k) candidates drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centers = x[torch.randint(n, (1,), generator=generator)]
    closest = _sq_dists(x, centers)[:, 0]
    for _ in range(1, k):
        if closest.sum() > 0:
            probs = (closest / closest.sum()).cpu()
        else:
            probs = torch.full((n,), 1.0 / n)
        cand = torch.multinomial(probs, trials, replacement=True, generator=generator).to(x.device)
        cand_closest = torch.minimum(closest[None], _sq_dists(x, x[cand]).T)  # [trials, M]
        best = cand_closest.sum(1).argmin()
        centers = torch.cat([centers, x[cand[best]][None]])
        closest = cand_closest[best]
    return centers


def kmeans(x, k, seed=0, n_init=1, max_iter=300, tol=1e-4):
    """Lloyd's K-means from k-means++ (§13): x [M, D] -> (labels [M], centres [k, D], inertia),
    fixed by the seed; `tol` is relative to the data's mean variance, as in scikit-learn."""
    x = x.float()
    k = min(k, x.shape[0])
    generator = torch.Generator().manual_seed(seed)
    tol = tol * x.var(0).mean().item()
    best = None
    for _ in range(n_init):
        centers = kmeans_pp(x, k, generator)
        for _ in range(max_iter):
            labels = _sq_dists(x, centers).argmin(1)
            counts = torch.bincount(labels, minlength=k)
            new = torch.zeros_like(centers).index_add_(0, labels, x) / counts.clamp(min=1)[:, None]
            empty = counts == 0
            if empty.any():  # an empty cluster takes the points farthest from their centres
                own = _sq_dists(x, centers).gather(1, labels[:, None])[:, 0]
                new[empty] = x[own.topk(int(empty.sum())).indices]
            shift = ((new - centers) ** 2).sum()
            centers = new
            if shift <= tol:
                break
        dists, labels = _sq_dists(x, centers).min(1)
        inertia = dists.sum().item()
        if best is None or inertia < best[2]:
            best = (labels, centers, inertia)
    return best


def kmeans_labels(features, k, seed=0):
    """features [T, h, w, D] -> cluster ids [T, h, w], fitted once over the whole video."""
    labels = kmeans(features.reshape(-1, features.shape[-1]), k, seed)[0]
    return labels.reshape(features.shape[:-1])


# The noise-square score (§4.4, Fig. 6).


def patch_masks(masks, patch_size):
    """Pixel masks bool [T, H, W] -> patch masks [T, h, w]: a patch is square if half its pixels
    are."""
    return F.avg_pool2d(masks.float()[:, None], patch_size)[:, 0] >= 0.5


def cluster_iou(labels, truth, frames=None):
    """labels [T, h, w], truth bool [T, h, w] -> (ONE cluster for the whole video, the one with the
    best mean IoU over `frames` (default all); its IoU per frame [T]; that mean). Both empty counts
    as IoU 1."""
    frames = list(range(labels.shape[0])) if frames is None else list(frames)
    truth = truth.to(labels.device)
    best = (None, None, -1.0)
    for c in labels.unique().tolist():
        pred = labels == c
        inter = (pred & truth).flatten(1).sum(1).float()
        union = (pred | truth).flatten(1).sum(1).float()
        per_frame = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        if per_frame[frames].mean().item() > best[2]:
            best = (c, per_frame.cpu(), per_frame[frames].mean().item())
    return best


def motion_ceiling(masks, first_frame=N_SOURCE):
    """(the first frame in which the square has moved or None, the share of frames
    first_frame..T-1 from there on): until it moves the video is one still noise image, so
    features finding it by motion score at most that."""
    moved = (masks != masks[:1]).flatten(1).any(1)
    if not moved.any():
        return None, 0.0
    first_move = int(moved.float().argmax())
    T = masks.shape[0]
    return first_move, (T - max(first_move, first_frame)) / max(T - first_frame, 1)


def position_features(T, h, w):
    """The positions-only control: each patch's (row, column), the same in every frame."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows, cols], -1).float()[None].expand(T, h, w, 2)


def noise_square_demo(model, video, masks, features, args):
    """The demo's table, scored from frame N_SOURCE on: video uint8 [T, 3, H, W], masks bool
    [T, H, W], `features` the model's core features of the video."""
    T, size = len(video), video.shape[-1]
    P = model.config.patch_size
    first = min(N_SOURCE, T - 1)
    x = video.float() / 255
    x0 = without_square(video, masks, args.seed).float() / 255
    truth = patch_masks(masks, P)
    device = args.device
    torch.manual_seed(args.seed)
    untrained = RVM(model.config).eval()  # the same size, randomly initialised
    # each row computed when it is scored: one in memory at a time
    rows = {"core features (RVM)": lambda: features,
            "encoder only (image model)": lambda: unroll(model, x, per_frame=True, device=device),
            "untrained model (random init)": lambda: unroll(untrained, x, device=device),
            "control: video without square": lambda: unroll(model, x0, device=device),
            "control: patch positions only": lambda: position_features(*truth.shape).to(device)}
    scores = {name: cluster_iou(kmeans_labels(get(), args.k, args.seed), truth, range(first, T))
              for name, get in rows.items()}
    print(f"noise square {size}x{size}, T={T}, square {int(masks[0].any(0).sum())} px, patch {P} "
          f"({size // P}x{size // P} tokens), k={args.k}, seed {args.seed}")
    first_move, ceiling = motion_ceiling(masks, first)
    if first_move is not None:
        print(f"the square first moves at frame {first_move}: features that find it by its motion "
              f"score at most {ceiling:.3f} over frames {first}..{T - 1}")
    print(f"mean IoU of the best single K-means cluster with the square, frames {first}..:")
    for name, (_, _, mean) in scores.items():
        print(f"  {name:32s} {mean:6.3f}")
    means = [mean for _, _, mean in scores.values()]
    print(f"  {'core minus the best other row':32s} {means[0] - max(means[1:]):+.3f}")


# Pictures.


def outline(masks, width=1):
    """The inner border of each mask [T, H, W], `width` pixels wide: mask pixels with a non-mask
    pixel within `width` of them (8-neighbourhood)."""
    padded = F.pad(masks.float()[:, None], (width,) * 4, mode="replicate")
    eroded = -F.max_pool2d(-padded, 2 * width + 1, stride=1)
    return masks & (eroded[:, 0] < 0.5)


def colour_panels(video, rgb, labels, scale=1, masks=None):
    """float video [T, 3, H, W], PCA rgb [T, h, w, 3], labels [T, h, w] -> uint8 frames
    [T, sH, 3 sW, 3]: input | PCA | K-means, upsampled (nearest), `masks` [T, H, W] in white."""
    size = (video.shape[-2] * scale, video.shape[-1] * scale)
    up = lambda a: F.interpolate(a.float(), size=size, mode="nearest")
    km = torch.from_numpy(PALETTE[labels.cpu().numpy() % len(PALETTE)]).permute(0, 3, 1, 2) / 255
    panels = [up(video.cpu()), up(rgb.cpu().permute(0, 3, 1, 2)), up(km)]
    if masks is not None:
        width = max(1, size[0] // 128)  # seen in the strip
        edge = outline(up(masks[:, None].cpu())[:, 0] > 0.5, width=width)[:, None]
        panels = [torch.where(edge, 1.0, p) for p in panels]
    frames = torch.cat(panels, dim=3).permute(0, 2, 3, 1).clamp(0, 1)
    return (frames * 255).round().to(torch.uint8).numpy()


def visualize(video, features, out_dir, name, k, seed=0, fps=8, scale=None, strip=None,
              masks=None):
    """PCA and K-means of `features` [T, h, w, D] of float `video` [T, 3, H, W], written to
    out_dir as <name>.gif, .mp4 and _strip.png (like the paper's Fig. 5, 6): their paths."""
    from matplotlib.figure import Figure  # no pyplot: straight to a file, no display needed

    os.makedirs(out_dir, exist_ok=True)
    T = len(video)
    scale = scale or max(1, math.ceil(256 / video.shape[-2]))  # small frames: blown up
    panels = colour_panels(video, pca_rgb(features), kmeans_labels(features, k, seed), scale, masks)
    paths = [os.path.join(out_dir, f"{name}{ext}") for ext in (".gif", ".mp4", "_strip.png")]
    iio.imwrite(paths[0], panels, duration=1000 / fps, loop=0)
    # H.264 wants an even height and width
    pad = ((0, 0), (0, panels.shape[1] % 2), (0, panels.shape[2] % 2), (0, 0))
    even = np.pad(panels, pad, mode="edge")
    iio.imwrite(paths[1], even, plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p")
    which = strip or np.linspace(0, T - 1, min(T, 8)).round().astype(int).tolist()
    which = [t for t in which if 0 <= t < T]
    fig = Figure(figsize=(1.6 * len(which), 5.2))
    axes = fig.subplots(3, len(which), squeeze=False)
    for c, t in enumerate(which):  # the GIF's frames, outline and all, cut into their three panels
        for r, image in enumerate(np.split(panels[t], 3, axis=1)):
            axes[r, c].imshow(image)
            axes[r, c].set(xticks=[], yticks=[])
            axes[r, c].set_title(f"t = {t}" if r == 0 else "", fontsize=9)
            axes[r, c].set_ylabel(("input", "PCA", "K-means")[r] if c == 0 else "", fontsize=9)
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=120)
    return paths


# Command line.


def parse_args(argv=None):
    description = __doc__.split("\n\n")[0] + " Settings are written --name=value."
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--video", help="a video file or a folder of frames")
    what.add_argument("--demo", action="store_true",
                      help="the white-noise square, scored (§4.4, Fig. 6)")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt", help="weights: a train.py checkpoint (.pt) or the authors' .npz")
    weights.add_argument("--untrained", metavar="CONFIG",
                         help="a randomly initialised model of a config's size")
    p.add_argument("--out_dir", help="where the pictures go (default out/visualize/<model>)")
    p.add_argument("--image_size", type=int,
                   help="square frame size (default: whole patches; demo: a .pt's, or 512)")
    p.add_argument("--frames", type=int,
                   help="the stimulus's length (default 64), or the most frames read")
    p.add_argument("--square", type=int,
                   help="stimulus: the square's side in pixels (default half the frame)")
    p.add_argument("--speed", type=float,
                   help="stimulus: pixels per frame (default: across the frame once)")
    p.add_argument("--direction", default="right", choices=DIRECTIONS)
    p.add_argument("--k", type=int, default=5, help="K-means clusters (§13: 5)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds K-means, the stimulus and the untrained models")
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--scale", type=int,
                   help="upsampling of the written frames (default: to >= 256 px)")
    p.add_argument("--strip",
                   help="comma-separated frames for the PNG strip (default 8, evenly spaced)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model, model_name = named_model(args.ckpt, args.untrained, args.seed)
    P = model.config.patch_size
    out_dir = args.out_dir or os.path.join("out", "visualize", model_name)
    strip = [int(s) for s in args.strip.split(",")] if args.strip else None
    masks = None
    if args.demo:
        # a .pt: the size it was trained at
        size = args.image_size or getattr(model, "trained_with", {}).get("image_size") or 512
        if size % P:
            raise ValueError(f"--image_size={size} is not a multiple of the patch size {P}")
        video_u8, masks = noise_square_video(args.frames or 64, size, args.square, args.speed,
                                             args.direction, args.seed)
        video = video_u8.float() / 255
        name = f"noise_square_{size}px_{len(video_u8)}f_seed{args.seed}"
    else:
        video = load_video(args.video, P, args.image_size, args.frames)
        name = Path(args.video).stem
    H, W = video.shape[-2:]
    tokens = H * W // P ** 2
    if tokens > MAX_TOKENS:
        print(f"visualize.py: warning: {tokens} tokens per frame at {H}x{W} with patch {P}: this "
              "will be slow; --image_size sets a smaller frame", file=sys.stderr)
    features = unroll(model, video, device=args.device)  # once, for the table and the pictures
    if args.demo:
        noise_square_demo(model, video_u8, masks, features, args)
    paths = visualize(video, features, out_dir, name, args.k, args.seed, args.fps, args.scale,
                      strip, masks)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    run_script(main, "visualize.py", (ValueError, OSError, KeyError))
