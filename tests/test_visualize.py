"""visualize.py: PCA, K-means, the noise-square IoU, the pictures, and the script end to end."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import visualize as vis
from conftest import REFERENCE
from model import RVM, RVMConfig, load_model

TINY_CONFIG = ("patch_size = {P}\nwidth = 32\nenc_layers = 1\nenc_heads = 2\ncore_layers = 1\n"
               "core_heads = 2\n")

# ----------------------------------------------------------------------------------------------
# PCA


def planted(n=2000, dim=24, stds=(6.0, 3.0, 1.5), noise=0.05, seed=0):
    """Tokens living (up to small noise) in a 3-D subspace with known directions and scales."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    latent = torch.randn(n, 3, generator=g) * torch.tensor(stds)
    # an offset to centre away
    x = latent @ basis[:, :3].T + noise * torch.randn(n, dim, generator=g) + 7.0
    return x, latent, basis[:, :3].T


def test_pca_recovers_planted_components_in_order():
    x, latent, directions = planted()
    scores, comps, var = vis.pca(x, 3)
    for i in range(3):
        # i-th component = i-th planted direction (largest variance first), up to sign
        assert abs(torch.dot(comps[i], directions[i]).item()) > 0.999
        assert abs(torch.corrcoef(torch.stack([scores[:, i], latent[:, i]]))[0, 1].item()) > 0.999
    assert torch.allclose(var, torch.tensor([36.0, 9.0, 2.25]), rtol=0.1)
    # whitened: unit variance, uncorrelated
    assert torch.allclose(torch.cov(scores.T), torch.eye(3), atol=1e-3)


def test_pca_rgb_in_unit_range_and_deterministic_sign():
    x, latent, _ = planted()
    rgb = vis.pca_rgb(x.reshape(40, 50, -1))
    assert rgb.shape == (40, 50, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert rgb.std() > 0.15  # not collapsed to grey
    # the colour encodes the planted coordinate (monotonic in it, up to the fixed sign)
    r = rgb.reshape(-1, 3)[:, 0]
    assert abs(torch.corrcoef(torch.stack([r, latent[:, 0]]))[0, 1].item()) > 0.9
    assert torch.equal(rgb, vis.pca_rgb(x.reshape(40, 50, -1)))
    # each component's sign is fixed (largest loading positive), not left to the eigensolver
    _, comps, _ = vis.pca(x, 3)
    assert (comps.gather(1, comps.abs().argmax(1, keepdim=True)) > 0).all()


# ----------------------------------------------------------------------------------------------
# K-means


def blobs(seed=0):
    sk = pytest.importorskip("sklearn.datasets")
    x, y = sk.make_blobs(n_samples=3000, centers=5, n_features=8, cluster_std=2.5,
                         random_state=seed)
    return torch.tensor(x, dtype=torch.float32), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_inertia_matches_sklearn(seed):
    cluster = pytest.importorskip("sklearn.cluster")
    x, _ = blobs(seed)
    ref = cluster.KMeans(n_clusters=5, init="k-means++", n_init=1, random_state=seed).fit(x.numpy())
    _, _, inertia = vis.kmeans(x, k=5, seed=seed)
    assert abs(inertia - ref.inertia_) / ref.inertia_ < 0.01


def test_kmeans_inertia_matches_sklearn_on_unstructured_data():
    # No planted clusters: many local optima; both take the best of 10 k-means++ starts.
    cluster = pytest.importorskip("sklearn.cluster")
    x = torch.randn(2000, 6, generator=torch.Generator().manual_seed(3))
    ref = cluster.KMeans(n_clusters=5, init="k-means++", n_init=10, random_state=0).fit(x.numpy())
    _, _, inertia = vis.kmeans(x, k=5, seed=0, n_init=10)
    assert abs(inertia - ref.inertia_) / ref.inertia_ < 0.01


def test_kmeans_recovers_blobs_and_is_seeded():
    x, y = blobs(0)
    labels, centers, _ = vis.kmeans(x, k=5, seed=0)
    assert centers.shape == (5, 8)
    # every true blob maps to one cluster: the clustering agrees with the truth up to renaming
    for b in range(5):
        counts = torch.bincount(labels[torch.from_numpy(y == b)], minlength=5)
        assert counts.max() >= 0.98 * (y == b).sum()
    again, _, _ = vis.kmeans(x, k=5, seed=0)
    assert torch.equal(labels, again)
    z = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    a, b = vis.kmeans(z, 5, seed=0)[0], vis.kmeans(z, 5, seed=0)[0]
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# The noise-square score


def test_patch_masks_half_rule():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0:2] = True  # top-left patch: 2 of 4 pixels -> square (>= half)
    masks[0, 0, 2] = True  # top-right patch: 1 of 4 -> not square
    masks[0, 2:, 2:] = True  # bottom-right: all 4 -> square
    assert vis.patch_masks(masks, 2).tolist() == [[[True, False], [False, True]]]


def test_cluster_iou_known_answers_and_one_cluster_for_the_whole_video():
    truth = torch.zeros(3, 4, 4, dtype=torch.bool)
    truth[:, 1:3, 1:3] = True  # 4 square patches per frame
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    labels[0][truth[0]] = 1  # frame 0: cluster 1 is exactly the square        -> IoU 1
    labels[1, 1:3, 1:4] = 1  # frame 1: cluster 1 covers 6 patches, 4 of them square -> 4/6
    labels[2, 1:3, 1:3] = 2  # frame 2: cluster 2 is the square, cluster 1 absent -> cluster 1 IoU 0
    cluster, per_frame, mean = vis.cluster_iou(labels, truth)
    # One choice for the whole video: cluster 1 (mean (1 + 2/3 + 0) / 3), not the per-frame best
    # (which would be 1, 2/3, 1).
    assert cluster == 1
    assert torch.allclose(per_frame, torch.tensor([1.0, 4 / 6, 0.0]))
    assert mean == pytest.approx((1 + 4 / 6) / 3)
    # scoring only the last frame makes cluster 2 the best match
    cluster, _, mean = vis.cluster_iou(labels, truth, frames=[2])
    assert (cluster, mean) == (2, pytest.approx(1.0))


def test_motion_ceiling_known_answers():
    masks = torch.zeros(10, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 0:4] = True
    assert vis.motion_ceiling(masks) == (None, 0.0)  # never moves
    masks[6:, 2:6, 0:4] = False
    masks[6:, 2:6, 1:5] = True  # first moves at frame 6: frames 6..9 of the scored 4..9
    assert vis.motion_ceiling(masks) == (6, pytest.approx(4 / 6))
    assert vis.motion_ceiling(masks, first_frame=7) == (6, pytest.approx(1.0))
    _, moving, _ = toy_stimulus(T=8)  # moves 2 px a frame from frame 1 on
    assert vis.motion_ceiling(moving) == (1, 1.0)


def toy_stimulus(T=8, size=32, S=16, seed=0):
    """A square of its own noise sliding right over a static noise background."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
    sq = rng.integers(0, 256, (3, S, S), dtype=np.uint8)
    video = np.repeat(bg[None], T, 0)
    masks = np.zeros((T, size, size), bool)
    top = (size - S) // 2
    for t in range(T):
        left = t * (size - S) // T
        video[t, :, top:top + S, left:left + S] = sq
        masks[t, top:top + S, left:left + S] = True
    return torch.from_numpy(video), torch.from_numpy(masks), torch.from_numpy(bg)


def test_without_square_is_the_background():
    video, masks, bg = toy_stimulus()
    clean = vis.without_square(video, masks)
    assert clean.shape == video.shape
    seen = (~masks).any(0)  # pixels the square leaves at some point
    assert torch.equal(clean[0][:, seen], bg[:, seen])
    assert torch.equal(clean[0], clean[-1])  # static
    assert (clean != video).any()  # the square is gone


def test_outline_is_the_border_of_the_mask():
    masks = torch.zeros(1, 6, 6, dtype=torch.bool)
    masks[0, 1:5, 2:6] = True  # touches the right edge of the frame: no border drawn along it
    edge = vis.outline(masks)[0]
    assert edge[1, 2:6].all() and edge[4, 2:6].all() and edge[1:5, 2].all()
    assert not edge[2:4, 3:6].any() and not (edge & ~masks[0]).any()


def test_scores_oracle_features_find_the_square():
    # A feature set that IS the square mask must score IoU 1; positions alone must not.
    video, masks, _ = toy_stimulus(T=8, size=32, S=16)
    truth = vis.patch_masks(masks, 4)
    oracle = truth.float()[..., None].repeat(1, 1, 1, 3)
    _, _, mean = vis.cluster_iou(vis.kmeans_labels(oracle, k=2), truth)
    assert mean == pytest.approx(1.0)
    _, _, pos = vis.cluster_iou(vis.kmeans_labels(vis.position_features(8, 8, 8), k=5), truth)
    assert pos < 0.7


# ----------------------------------------------------------------------------------------------
# The script end to end


def write_test_video(tmp_path, T=6, size=64):
    rng = np.random.default_rng(0)
    # 64 x 80, 4 x 5 patches of 16
    frames = rng.integers(0, 256, (T, size, size + 16, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, f in enumerate(frames):
        iio.imwrite(folder / f"frame_{t}.png", f)  # frame_10 must not come before frame_2
    return path, folder, frames


def check_outputs(out, name, T, H, W):
    gif = iio.imread(out / f"{name}.gif", index=None)
    assert gif.shape[0] == T and gif.shape[1:3] == (H, 3 * W)
    mp4 = iio.imread(out / f"{name}.mp4", plugin="pyav")
    assert mp4.shape[0] == T and mp4.shape[1:3] == (H, 3 * W)
    png = iio.imread(out / f"{name}_strip.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100
    return gif


def tiny_config(tmp_path, P=16):
    (tmp_path / "tiny.py").write_text(TINY_CONFIG.format(P=P))
    return f"--untrained={tmp_path / 'tiny.py'}"


def test_end_to_end_random_model_on_a_video_file_and_a_folder(tmp_path):
    path, folder, frames = write_test_video(tmp_path, T=12)
    vis.main([f"--video={path}", f"--out_dir={tmp_path / 'a'}", "--scale=2", tiny_config(tmp_path)])
    gif = check_outputs(tmp_path / "a", "clip", T=12, H=128, W=160)
    # the K-means panel uses at most k colours (the GIF palette may add a few)
    assert 1 < len(np.unique(gif[:, :, 320:].reshape(-1, gif.shape[-1])[:, :3], axis=0)) <= 5 + 2
    vis.main([f"--video={folder}", f"--out_dir={tmp_path / 'b'}", "--frames=11", "--scale=1",
              tiny_config(tmp_path)])
    gif = check_outputs(tmp_path / "b", "frames", T=11, H=64, W=80)
    # the frames come in frame order: the input panel of GIF frame 10 is frame_10.png (GIF colours
    # are quantised, so compare against every frame and find it closest)
    errors = [np.abs(gif[10, :, :80, :3].astype(int) - f).mean() for f in frames]
    assert int(np.argmin(errors)) == 10


def test_end_to_end_official_micro_weights(tmp_path):
    ref = REFERENCE / "official_micro_a.npz"
    path, _, _ = write_test_video(tmp_path, T=5, size=64)
    vis.main([f"--video={path}", f"--ckpt={ref}", f"--out_dir={tmp_path}", "--scale=1", "--k=3"])
    check_outputs(tmp_path, "clip", T=5, H=64, W=80)
    # the features are the authors' model's: they match their reference run, frame by frame
    arrays = np.load(ref)
    video = torch.from_numpy(arrays["video"][0]).permute(0, 3, 1, 2).float()
    feats = vis.unroll(load_model(ref), video, progress=False)
    theirs = torch.from_numpy(arrays["features"][0, :, 1:]).reshape(feats.shape)
    assert torch.allclose(feats, theirs, atol=1e-5)


def test_unroll_is_streaming_and_matches_model_features():
    torch.manual_seed(0)
    model = RVM(RVMConfig(patch_size=8, width=32, enc_layers=1, enc_heads=2, core_layers=1,
                          core_heads=2, dec_width=32, dec_layers=1, dec_heads=2)).eval()
    video = torch.rand(5, 3, 16, 24)
    feats = vis.unroll(model, video, progress=False)
    with torch.no_grad():
        core = model.features(video[None])[0, :, 1:]
        assert torch.allclose(feats.reshape(5, 6, 32), core, atol=1e-5)
        enc = model.features(video[None], per_frame=True)[0, :, 1:]
    per_frame = vis.unroll(model, video, per_frame=True, progress=False)
    assert torch.allclose(per_frame.reshape(5, 6, 32), enc, atol=1e-5)


def test_demo_prints_the_table_and_outlines_the_square(tmp_path, capsys, monkeypatch):
    # The stimulus comes from data.py; the toy generator stands in so this test checks visualize.py
    # only.
    video, masks, _ = toy_stimulus(T=10, size=32, S=16)
    monkeypatch.setattr(vis, "noise_square_video", lambda *a, **k: (video, masks))
    args = ["--demo", tiny_config(tmp_path, P=4), "--image_size=32", "--frames=10",
            f"--out_dir={tmp_path}", "--scale=2"]
    vis.main(args)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("the square first moves at frame 1")  # the ceiling first ...
    rows = ["core features", "encoder only", "untrained model", "video without square",
            "patch positions", "core minus the best other row"]
    # ... then the five rows
    assert [any(r in line for line in lines[3:9]) for r in rows] == [True] * 6
    assert len(lines) == 10  # and the line naming the files written
    gif = check_outputs(tmp_path, "noise_square_32px_10f_seed0", T=10, H=64, W=64)
    # the true square is outlined in white on every panel: frame 0's square spans columns 0..15
    # (0..31 at scale 2) and rows 8..23 (16..47)
    assert (gif[0, 16, 0:32, :3] > 240).all() and (gif[0, 16, 64 * 2:64 * 2 + 32, :3] > 240).all()


@pytest.mark.slow
def test_demo_with_data_py_stimulus(tmp_path, capsys):
    vis.main(["--demo", tiny_config(tmp_path, P=8), "--image_size=64", "--frames=16",
              f"--out_dir={tmp_path}"])
    assert "control: patch positions only" in capsys.readouterr().out
    check_outputs(tmp_path, "noise_square_64px_16f_seed0", T=16, H=256, W=256)


def test_bad_videos_and_weights_are_one_line_on_the_command_line(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    path, _, _ = write_test_video(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "cut.mp4").write_bytes(path.read_bytes()[:300])
    (tmp_path / "cut.npz").write_bytes((REFERENCE / "official_micro_a.npz").read_bytes()[:5000])
    cases = [([f"--video={tmp_path / name}", tiny_config(tmp_path), *frames],
              f"{name}: not a readable video")
             for name in ("empty.mp4", "text.mp4", "cut.mp4") for frames in ([], ["--frames=4"])]
    cases += [([f"--video={path}", f"--ckpt={tmp_path / 'cut.npz'}"],
               "cut.npz: not a readable .npz"),
              ([f"--video={path}", f"--ckpt={tmp_path / 'none.pt'}"],
               "none.pt: no such checkpoint")]
    for args, message in cases:  # each an error of the kinds the command line turns into one line
        with pytest.raises((ValueError, OSError)) as err:
            vis.main([*args, f"--out_dir={tmp_path / 'o'}"])
        assert message in str(err.value) and "\n" not in str(err.value)
    # the command line: one line, no trace
    command = [sys.executable, str(ROOT / "visualize.py"), *cases[2][0],
               f"--out_dir={tmp_path / 'o'}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and cases[2][1] in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
