"""Tests for eval_labelprop.py: the propagation rules on examples worked out by hand, the metrics
on hand-made cases and against the DAVIS toolkit's own published scores, the readers' checks,
and end-to-end runs (oracle features on fixtures written here, a random model on real DAVIS)."""
import csv
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import eval_labelprop as lp

DAVIS_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)
COLOURS = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 5: (255, 255, 0),
           13: (0, 255, 255)}
TAU = 0.2 / math.log(2)  # affinities 0.2 apart weigh 2:1 after the softmax: weights by hand


# ----------------------------------------------------------------------------------------------
# Propagation rules, worked out by hand.


def test_queue_rule_by_hand():
    # Grid 1x2. Cell a has feature (1, 0) and label A in frame 0; cell b has (0, 1) and label B.
    # In every later frame, a = (0.8, 0.6): affinity 0.8 with a0, 0.6 with b0, and 1.0 with the a
    # cells of queued frames. b = (-0.6, 0.8): affinity 0 with a's query, so b never competes.
    # n_context 1, top-3, weights e^(s/tau) = 32, 16, 8 for s = 1.0, 0.8, 0.6.
    #   frame 1: context = frame 0 + its copy -> a0, a0', and b0 or b0' (both B): (16A+16A+8B)/40
    #            A share = 0.8
    #   frame t >= 2: context = frame 0 + frame t-1 only -> a_{t-1} (32), a0 (16), b0 (8):
    #            A_t = (32 A_{t-1} + 16) / 56 = (4 A_{t-1} + 2) / 7
    a0, b0 = [1.0, 0.0], [0.0, 1.0]
    a, b = [0.8, 0.6], [-0.6, 0.8]
    feats = torch.tensor([[[a0, b0]]] + [[[a, b]]] * 4)  # [T=5, h=1, w=2, C=2]
    labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    out = lp.label_propagation(feats, labels, n_context=1, temperature=TAU, topk=3, radius=100)
    expected = [1.0, 0.8]
    for _ in range(3):
        expected.append((4 * expected[-1] + 2) / 7)  # 5.2/7, 34.8/49, 237.2/343
    assert out.shape == (5, 1, 2, 2)
    np.testing.assert_allclose(out[:, 0, 0, 0].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out[:, 0, 0].sum(-1).numpy(), 1.0, atol=1e-6)  # still a distribution
    assert torch.equal(out[0], labels)  # frame 0's prediction is its labels
    # Two queue slots start as two copies of frame 0: a0 fills the whole top-3 at frame 1 and,
    # every frame after, a0 and its remaining copy or a_{t-1} (all pure A) do. An initially empty
    # queue (DINO's rule) would give A share 2/3 at frame 1.
    out2 = lp.label_propagation(feats, labels, n_context=2, temperature=TAU, topk=3, radius=100)
    np.testing.assert_allclose(out2[:, 0, 0, 0].numpy(), 1.0, atol=1e-6)


def _one_hot_grid(h, w):
    return torch.eye(h * w).reshape(h, w, h * w)  # features and labels: one per cell


def test_radius_rule_frame0_exempt_strict():
    # Grid 1x5, cell j has feature e_j and label j in frame 0. At frame 1, cell 0 asks with
    # 0.6 e_1 + 0.8 e_4: cell 4 is 4 cells away, cell 1 is 1 away. n_context 1, top-2.
    feats0 = _one_hot_grid(1, 5)
    feats1 = feats0.clone()
    feats1[0, 0] = 0.6 * feats0[0, 1] + 0.8 * feats0[0, 4]
    feats = torch.stack([feats0, feats1])
    labels = _one_hot_grid(1, 5)
    run = lambda radius: lp.label_propagation(feats, labels, n_context=1, temperature=TAU, topk=2,
                                              radius=radius)[1, 0, 0].numpy()
    # radius 4 (strict <): the queued copy of cell 4 is out, frame 0's cell 4 is in (exempt).
    # Top-2 = cell 4 of frame 0 (weight 2) and cell 1 (weight 1).
    np.testing.assert_allclose(run(4), [0, 1 / 3, 0, 0, 2 / 3], atol=1e-6)
    # radius 4.01: both copies of cell 4 are in.
    np.testing.assert_allclose(run(4.01), [0, 0, 0, 0, 1], atol=1e-6)
    # (Had frame 0 been restricted as well, radius 4 would give pure label 1.)
    # The other cells ask with their own feature and keep their label.
    out = lp.label_propagation(feats, labels, n_context=1, temperature=TAU, topk=2, radius=4)
    np.testing.assert_allclose(out[1, 0, 1:].numpy(), labels[0, 1:].numpy(), atol=1e-6)


def test_radius_is_euclidean():
    # Grid 3x3: cell (0,0) asks with 0.6 e(0,1) + 0.8 e(2,2). Cell (2,2) is sqrt(8) = 2.83 cells
    # away: Chebyshev distance 2, Manhattan 4. With radius 2.5 only a Euclidean rule excludes it (a
    # Chebyshev one would not); with radius 2.9 only a Euclidean rule includes it (Manhattan would
    # not).
    f0 = _one_hot_grid(3, 3)
    f1 = f0.clone()
    f1[0, 0] = 0.6 * f0[0, 1] + 0.8 * f0[2, 2]
    feats, labels = torch.stack([f0, f1]), _one_hot_grid(3, 3)
    for radius, share in [(2.5, 2 / 3), (2.9, 1.0)]:
        pred = lp.label_propagation(feats, labels, n_context=1, temperature=TAU, topk=2,
                                    radius=radius)[1, 0, 0]
        assert pred[8].item() == pytest.approx(share, abs=1e-6)  # label of cell (2,2)
        assert pred[1].item() == pytest.approx(1 - share, abs=1e-6)  # label of cell (0,1)


def test_topk_and_softmax_by_hand():
    # Grid 1x4, frame 0 cells e_0..e_3 with labels 0..3. Frame 1's cell 0 has affinities
    # s = v/|v| with v = (0.9, 0.5, 0.3, 0.1), each seen twice (frame 0 and its queued copy).
    # Top-4 = {s0, s0, s1, s1}: label 0 gets e^(s0/T) / (e^(s0/T) + e^(s1/T)), label 1 the rest.
    # Top-5 adds one s2: weights 2e^a : 2e^b : e^c.
    v = torch.tensor([0.9, 0.5, 0.3, 0.1])
    s = v / v.norm()
    f0 = _one_hot_grid(1, 4)
    f1 = f0.clone()
    f1[0, 0] = s
    feats, labels = torch.stack([f0, f1]), _one_hot_grid(1, 4)
    T = 0.5
    a, b, c = (math.exp(x / T) for x in s[:3].tolist())
    pred4 = lp.label_propagation(feats, labels, n_context=1, temperature=T, topk=4,
                                 radius=20)[1, 0, 0]
    np.testing.assert_allclose(pred4.numpy(), [a / (a + b), b / (a + b), 0, 0], atol=1e-6)
    pred5 = lp.label_propagation(feats, labels, n_context=1, temperature=T, topk=5,
                                 radius=20)[1, 0, 0]
    z = 2 * a + 2 * b + c
    np.testing.assert_allclose(pred5.numpy(), [2 * a / z, 2 * b / z, c / z, 0], atol=1e-6)
    # Chunking the query cells changes nothing.
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(6, 4, 5, 8), dim=-1)
    labels = torch.softmax(torch.randn(4, 5, 3), -1)
    full = lp.label_propagation(feats, labels, n_context=3, temperature=0.7, topk=5, radius=2)
    chunked = lp.label_propagation(feats, labels, n_context=3, temperature=0.7, topk=5, radius=2,
                                   chunk_size=3)
    torch.testing.assert_close(full, chunked)


# ----------------------------------------------------------------------------------------------
# First-frame labels and read-out.


def test_mask_to_labels_and_back():
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 9:] = 3  # cell (.., 0) covers columns 0..15; columns 7 and 8 are both 0
    labels, values = lp.mask_to_labels(mask, size=(32, 32), grid=(2, 2))
    assert list(values) == [0, 3] and labels.shape == (2, 2, 2)
    # Bilinear without antialiasing samples between pixels 7 and 8 of a 16-pixel cell (like
    # cv2.INTER_LINEAR): label 3 gets 0 in the left cells, not its area share 7/16.
    np.testing.assert_allclose(labels[..., 1].numpy(), [[0, 1], [0, 1]])
    back = lp.labels_to_mask(labels, values, size=(32, 32), native_size=(20, 30))
    assert back.shape == (20, 30) and set(np.unique(back)) == {0, 3}
    # Joints: background is 1 exactly where no joint's Gaussian reaches.
    heat = lp.pose_to_labels(np.array([[48.0, 32.0], [-50.0, 10.0]]), grid=(6, 8),
                             native_size=(96, 128))
    # at (x=3, y=2); off-grid joint: no mass
    assert heat[2, 3, 1] == 1.0 and heat[..., 2].sum() == 0
    no_mass = (heat[..., 1:].sum(-1) == 0).numpy().astype(np.float32)
    np.testing.assert_array_equal(heat[..., 0].numpy(), no_mass)
    joints, visible = lp.labels_to_pose(heat[None], native_size=(96, 128))
    np.testing.assert_allclose(joints[0, 0], [48, 32], atol=1e-4)
    assert visible[0].tolist() == [True, False] and (joints[0, 1] == -1).all()


# ----------------------------------------------------------------------------------------------
# Metrics on hand-made cases.


def _square(top, left, size=20, shape=(100, 100)):
    m = np.zeros(shape, bool)
    m[top:top + size, left:left + size] = True
    return m


def test_j_and_f_shifted_square():
    gt = _square(10, 10)
    # Shifted 5 px right: intersection 20x15 = 300, union 500 -> J = 0.6.
    # Boundaries (seg2bmap) are the 80-pixel rings around rows/cols 9..29 and 9..29 / 14..34; the
    # tolerance is ceil(0.008 * hypot(100, 100)) = 2 px. Matched pred-boundary pixels: top and
    # bottom rows x = 14..31 (18 + 18) and the left column's rows 10, 11, 27, 28 (4): 40/80 =
    # precision, the same for recall by symmetry -> F = 0.5.
    shifted = _square(10, 15)
    assert lp.seg2bmap(gt).sum() == 80
    assert lp.davis_j(gt, shifted) == pytest.approx(0.6)
    assert lp.davis_f(gt, shifted) == pytest.approx(0.5)
    # Shifted (2, 2) diagonally: only the far corner's 3 pixels are more than 2 px (Euclidean) from
    # the other ring: P = R = 77/80. A square (Chebyshev) structuring element would give 1.0.
    assert lp.davis_f(gt, _square(12, 12)) == pytest.approx(77 / 80)
    assert lp.davis_j(gt, _square(12, 12)) == pytest.approx(18 * 18 / (800 - 18 * 18))
    # Per frame over a stack.
    np.testing.assert_allclose(lp.davis_j(np.stack([gt, gt]), np.stack([gt, shifted])), [1.0, 0.6])
    np.testing.assert_allclose(lp.davis_f(np.stack([gt, gt]), np.stack([gt, shifted])), [1.0, 0.5])


def test_j_and_f_empty_masks_toolkit_conventions():
    gt, empty = _square(10, 10), np.zeros((100, 100), bool)
    assert lp.davis_j(gt, empty) == 0.0 and lp.davis_f(gt, empty) == 0.0  # missed object: P=1, R=0
    assert lp.davis_j(empty, gt) == 0.0 and lp.davis_f(empty, gt) == 0.0  # false alarm: P=0, R=1
    assert lp.davis_j(empty, empty) == 1.0 and lp.davis_f(empty, empty) == 1.0  # both empty
    j = lp.davis_j(np.stack([gt, empty, empty]), np.stack([empty, gt, empty]))
    np.testing.assert_allclose(j, [0, 0, 1])


def test_davis_summary_averages_objects_without_first_and_last_frame():
    # Rows hold per-frame scores of frames 1..T-1; the last frame (here 0.0) must not count.
    rows = [dict(sequence="a", object=1, n_frames=4, j=np.array([1.0, 1.0, 0.0]),
                 f=np.array([1.0, 1.0, 0.0])),
            dict(sequence="a", object=2, n_frames=4, j=np.array([0.0, 0.0, 0.0]),
                 f=np.array([0.5, 0.5, 0.0])),
            dict(sequence="b", object=1, n_frames=4, j=np.array([1.0, 0.5, 0.0]),
                 f=np.array([1.0, 1.0, 0.0]))]
    s = lp.davis_summary(rows)
    assert s["j"] == pytest.approx((1 + 0 + 0.75) / 3)  # per object, not per sequence (0.625)
    assert s["f"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert s["jf"] == pytest.approx((s["j"] + s["f"]) / 2)
    # the first 3 frames
    assert lp.davis_summary(rows, n_frames=3)["j"] == pytest.approx((1 + 0 + 1) / 3)


def test_miou_by_hand():
    gt = np.array([[0, 0, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 1, 2]])
    hist = lp.confusion(gt, pred, n_classes=3)  # the 255 pixel is ignored
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    m, per_class = lp.miou(hist)
    # class 0: 1 / (2 + 1 - 1) = 1/2; class 1: 2 / (2 + 3 - 2) = 2/3; class 2 absent: left out
    assert m == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert np.isnan(per_class[2])
    more = hist + lp.confusion([[2]], [[0]], 3)
    assert lp.miou(more)[0] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_pck_by_hand():
    # Frame 1 of video 1: visible ground-truth joints span (0,0)..(30,40): diagonal 50, normaliser
    # 30, so PCK@0.1 allows 3 px. Joint 3 is invisible (and far away: counted, it would change the
    # box).
    g1 = np.full((2, 15, 2), 10.0)
    g1[:, 0] = (0, 0)
    g1[:, 1] = (30, 40)
    g1[:, 3] = (300, 400)
    p1 = g1.copy()
    p1[0] += 100  # frame 0 is given, never scored
    p1[1, 0] += (2, 0)  # 2 px: hit
    p1[1, 1] += (0, 3)  # 3 px: hit (<=)
    p1[1, 2] += (3.5, 0)  # 3.5 px: miss
    vis1 = np.ones((2, 15), bool)
    vis1[1, 3] = False
    score, per_joint = lp.pck(g1, p1, vis1, threshold=0.1)
    assert np.isnan(per_joint[3]) and per_joint[2] == 0 and np.nansum(per_joint) == 13
    assert score == pytest.approx(13 / 14)
    assert lp.pck(g1, p1, vis1, threshold=0.2)[0] == 1.0  # 6 px
    # A second video (frames 1 and 2 scored), joint 0 off by 5 px in both: joints pool their frames
    # over videos, so joint 0 scores 1/3 (not the mean of per-video scores, 1/2).
    g2 = np.full((3, 15, 2), 10.0)
    g2[:, 0] = (0, 0)
    g2[:, 1] = (30, 40)
    g2[:, 3] = (20, 20)
    p2 = g2.copy()
    p2[1:, 0] += (5, 0)
    score, per_joint = lp.pck([g1, g2], [p1, p2], [vis1, np.ones((3, 15), bool)], threshold=0.1)
    assert per_joint[0] == pytest.approx(1 / 3) and per_joint[2] == pytest.approx(2 / 3)
    assert per_joint[3] == 1
    assert score == pytest.approx(14 / 15)


# ----------------------------------------------------------------------------------------------
# The DAVIS toolkit's own scores: OSVOS predictions vs ground truth, frame by frame.
# OSVOS_REFERENCE (end of file) holds J and F of every scored frame of the 13 single-object
# DAVIS-2017 val sequences, x 10^4, as the official toolkit computed them for the DAVIS website
# (davisvideochallenge/davisvideochallenge.github.io, json_data/raw_eval/2017/osvos_davis.json,
# object "<sequence>_1"; the first and last frames are not scored).


def _osvos_reference():
    ref, key = {}, None
    for token in OSVOS_REFERENCE.split():
        if ":" in token:
            key = tuple(token.split(":"))
            ref[key] = []
        else:
            ref[key].append(int(token) / 1e4)
    return ref


def _check_osvos(davis, sequences):
    ref = _osvos_reference()
    osvos = davis / "osvos-davis2017"
    if not osvos.is_dir():
        pytest.skip(f"{osvos} not found")
    for seq in sequences:
        root = next(davis / d for d in ("davis2017-mini", "davis2017-more")
                    if (davis / d / "Annotations" / "480p" / seq).is_dir())
        names = sorted(os.listdir(root / "Annotations" / "480p" / seq))[1:-1]
        gt = np.stack([lp.read_mask(root / "Annotations" / "480p" / seq / n) for n in names]) == 1
        pred = np.stack([lp.read_mask(osvos / seq / n) for n in names]) == 1
        j, f = lp.davis_j(gt, pred), lp.davis_f(gt, pred)
        assert len(j) == len(ref[seq, "J"]) == len(ref[seq, "F"])
        # The toolkit's numbers are rounded to 4 decimals: ours must round to the same.
        np.testing.assert_allclose(np.round(j, 4), ref[seq, "J"], atol=1e-9, err_msg=f"{seq} J")
        np.testing.assert_allclose(np.round(f, 4), ref[seq, "F"], atol=1e-9, err_msg=f"{seq} F")


def test_osvos_matches_official_toolkit_mini(davis):
    _check_osvos(davis, ["blackswan", "car-shadow", "dog"])


@pytest.mark.slow
def test_osvos_matches_official_toolkit_all_13(davis):
    seqs = sorted({s for s, _ in _osvos_reference()})
    assert len(seqs) == 13
    _check_osvos(davis, seqs)


# ----------------------------------------------------------------------------------------------
# Fixtures written here: DAVIS / VIP / JHMDB layouts with labels painted as colours, and an "oracle"
# feature extractor that reads the colour of each cell back as a one-hot label. The frames are tiny
# (12x16) and the task resolution is 16x that (192x256), so one native pixel is one feature cell.
# Then the read-out is exact: bilinear upsampling of one-hot cells rounds the corners of label
# regions within half a cell, and nearest-exact downsampling to native size samples each cell's
# centre.


def _block_labels(T, shape, tracks):
    """Label maps [T, H, W]: each track (label, height, width, [(row, col) per frame]) paints a
    rectangle at its position in each frame."""
    maps = np.zeros((T, *shape), np.uint8)
    for label, bh, bw, path in tracks:
        for t, (r, c) in enumerate(path):
            maps[t, r:r + bh, c:c + bw] = label
    return maps


def _write_frames(folder, maps, ext=".jpg"):
    """Frames coloured by label (near-lossless JPEG: quality 100, no chroma subsampling)."""
    os.makedirs(folder, exist_ok=True)
    for t, m in enumerate(maps):
        rgb = np.zeros((*m.shape, 3), np.uint8)
        for label, colour in COLOURS.items():
            rgb[m == label] = colour
        Image.fromarray(rgb).save(os.path.join(folder, f"{t:05d}{ext}"), quality=100, subsampling=0)


def _write_masks(folder, maps, palette=True):
    os.makedirs(folder, exist_ok=True)
    for t, m in enumerate(maps):
        im = Image.fromarray(m)
        if palette:
            im.putpalette(DAVIS_PALETTE)
        im.save(os.path.join(folder, f"{t:05d}.png"))


def _oracle(frames, progress=None):
    """One-hot of the colour label of each 16x16 cell: perfect features for the fixtures."""
    T, H, W, _ = frames.shape
    cells = frames.reshape(T, H // 16, 16, W // 16, 16, 3).mean((2, 4))
    palette = np.array(list(COLOURS.values()), np.float32)
    nearest = ((cells[..., None, :] - palette) ** 2).sum(-1).argmin(-1)
    return torch.nn.functional.one_hot(torch.from_numpy(nearest), len(COLOURS)).float()


def _constant(frames, progress=None):
    T, H, W, _ = frames.shape
    return torch.ones(T, H // 16, W // 16, 1)


NATIVE, TASK = (12, 16), (192, 256)
DAVIS_TRACKS = {
    # (frames, [(label, height, width, [(row, col) per frame])]): objects moving a pixel or two a
    # frame
    "seq-a": (8, [(1, 3, 4, [(2, c) for c in (0, 1, 3, 5, 7, 9, 11, 12)]),
                  (2, 2, 3, [(r, 10) for r in (9, 8, 6, 4, 2, 1, 0, 0)])]),
    # seq-b also has a void (255) strip, which the toolkit reads as background
    "seq-b": (6, [(1, 4, 2, [(r, r + 2) for r in (0, 1, 3, 5, 7, 8)]), (255, 1, 3, [(11, 0)] * 6)]),
}


def _davis_fixture(root):
    for name, (T, tracks) in DAVIS_TRACKS.items():
        maps = _block_labels(T, NATIVE, tracks)
        _write_frames(root / "JPEGImages" / "480p" / name, maps)
        _write_masks(root / "Annotations" / "480p" / name, maps)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(DAVIS_TRACKS) + "\n")
    return root


def test_oracle_features_reproduce_davis_ground_truth(tmp_path):
    root = _davis_fixture(tmp_path / "davis")
    videos = lp.read_davis(str(root))
    assert [v["name"] for v in videos] == ["seq-a", "seq-b"]
    rows = lp.propagate_and_score("davis", videos, _oracle, TASK, out_dir=str(tmp_path / "out"),
                                  save_masks=True)
    objects = [(r["sequence"], r["object"]) for r in rows]
    assert objects == [("seq-a", 1), ("seq-a", 2), ("seq-b", 1)]
    assert lp.davis_summary(rows) == dict(jf=1.0, j=1.0, f=1.0)
    # The saved masks are the ground truth itself (void read as background), as palette PNGs.
    for name, (T, tracks) in DAVIS_TRACKS.items():
        for t, gt in enumerate(_block_labels(T, NATIVE, tracks) % 255):
            with Image.open(tmp_path / "out" / "masks" / name / f"{t:05d}.png") as im:
                assert im.mode == "P"
                np.testing.assert_array_equal(np.array(im), gt)
    # Control: features that cannot tell cells apart do not score 1.
    assert lp.davis_summary(lp.propagate_and_score("davis", videos, _constant, TASK))["jf"] < 0.7


def _vip_fixture(root):
    tracks = [(13, 2, 3, [(0, c) for c in (1, 2, 4, 3, 1)]),
              (5, 4, 2, [(6, c) for c in (0, 2, 4, 6, 8)]),
              (2, 3, 3, [(3, 12)] * 5)]
    maps = _block_labels(5, NATIVE, tracks)
    _write_frames(root / "Images" / "vid-1", maps)
    _write_masks(root / "Annotations" / "Category_ids" / "vid-1", maps, palette=False)
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "val_videos.txt").write_text("vid-1\n")
    return root, maps


def test_oracle_features_reproduce_vip_ground_truth(tmp_path):
    root, maps = _vip_fixture(tmp_path / "vip")
    rows = lp.propagate_and_score("vip", lp.read_vip(str(root)), _oracle, TASK)
    expected = sum(lp.confusion(m, m) for m in maps)
    # all pixels of all frames on the diagonal
    np.testing.assert_array_equal(rows[0]["hist"], expected)
    assert lp.miou(rows[0]["hist"])[0] == 1.0 and rows[0]["miou"] == 1.0
    constant = lp.propagate_and_score("vip", lp.read_vip(str(root)), _constant, TASK)
    assert lp.miou(constant[0]["hist"])[0] < 0.5


def _jhmdb_fixture(root, T=4, native=(96, 128)):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    # 15 static joints on cells of the 6x8 grid (x = 16 kx, y = 16 ky), spread out, each with its
    # Gaussian's 4 neighbours inside the grid (the read-out's top-5 cells).
    k = np.stack([rng.integers(2, 7, 15), rng.integers(2, 5, 15)], axis=1)
    k[0], k[1] = (2, 2), (6, 4)
    joints = np.repeat((16.0 * k)[None], T, axis=0)  # [T, 15, 2], 0-based pixels
    folder = root / "Rename_Images" / "walk" / "vid-1"
    _write_frames(folder, np.zeros((T, *native), np.uint8), ext=".png")
    (root / "joint_positions" / "walk" / "vid-1").mkdir(parents=True)
    scipy_io.savemat(root / "joint_positions" / "walk" / "vid-1" / "joint_positions.mat",
                     {"pos_img": joints.transpose(2, 1, 0) + 1})  # MATLAB: [2, 15, T], 1-based
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "walk_test_split1.txt").write_text("vid-1.avi 2\nvid-train.avi 1\n")
    return root, joints


def _position_oracle(frames, progress=None):
    """A perfect tracker of a static scene: each cell's feature is the one-hot of its position."""
    T, H, W, _ = frames.shape
    return torch.eye((H // 16) * (W // 16)).reshape(1, H // 16, W // 16, -1).repeat(T, 1, 1, 1)


def test_oracle_features_reproduce_jhmdb_joints(tmp_path):
    root, joints = _jhmdb_fixture(tmp_path / "jhmdb")
    videos = lp.read_jhmdb(str(root))
    assert [v["name"] for v in videos] == ["walk/vid-1"]  # the training video is left out
    np.testing.assert_allclose(videos[0]["joints"], joints)
    rows = lp.propagate_and_score("jhmdb", videos, _position_oracle, (96, 128))
    gts, preds, visibles = ([r[k] for r in rows] for k in ("gt", "pred", "visible"))
    np.testing.assert_allclose(preds[0], joints, atol=1e-3)
    assert visibles[0].all() and lp.pck(gts, preds, visibles)[0] == 1.0 and rows[0]["pck"] == 1.0


# ----------------------------------------------------------------------------------------------
# Bad data: errors that name the path, raised by the check before any model work.


def test_davis_bad_data_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        lp.read_davis(str(missing))

    root = _davis_fixture(tmp_path / "absent")
    (root / "ImageSets" / "2017" / "val.txt").write_text("seq-a\nseq-c\n")
    absent = root / "JPEGImages" / "480p" / "seq-c"
    with pytest.raises(FileNotFoundError, match=re.escape(str(absent))):
        lp.read_davis(str(root))

    root = _davis_fixture(tmp_path / "count")
    os.remove(root / "Annotations" / "480p" / "seq-b" / "00005.png")
    with pytest.raises(ValueError, match=re.escape(str(root / "Annotations" / "480p" / "seq-b"))):
        lp.read_davis(str(root))

    root = _davis_fixture(tmp_path / "grey")
    bad = root / "Annotations" / "480p" / "seq-a" / "00003.png"
    Image.open(bad).convert("L").save(bad)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        lp.read_davis(str(root))

    root = _davis_fixture(tmp_path / "names")
    with pytest.raises(ValueError, match="seq-z.*val.txt"):
        lp.read_davis(str(root), sequences=["seq-a", "seq-z"])


def test_vip_and_jhmdb_bad_data_errors(tmp_path):
    root, _ = _vip_fixture(tmp_path / "vip")
    os.remove(root / "Images" / "vid-1" / "00002.jpg")
    with pytest.raises(ValueError, match=re.escape(str(root / "Images" / "vid-1"))):
        lp.read_vip(str(root))

    root, _ = _jhmdb_fixture(tmp_path / "jhmdb")
    mat = root / "joint_positions" / "walk" / "vid-1" / "joint_positions.mat"
    os.remove(mat)
    with pytest.raises(FileNotFoundError, match=re.escape(str(mat))):
        lp.read_jhmdb(str(root))


def test_bad_data_is_reported_before_any_model_work(tmp_path, monkeypatch):
    # A stand-in for the model that fails loudly if the script asks for one.
    def no_model(*args, **kwargs):
        raise AssertionError("model work started before the data was checked")

    monkeypatch.setattr(lp, "named_model", no_model)
    root = _davis_fixture(tmp_path / "davis")
    os.remove(root / "Annotations" / "480p" / "seq-a" / "00007.png")
    labels = root / "Annotations" / "480p" / "seq-a"
    for source in ([f"--ckpt={tmp_path / 'missing.pt'}"], ["--untrained=configs/s.py"]):
        with pytest.raises(ValueError, match=re.escape(str(labels))):
            lp.main(["--task=davis", f"--data={root}", f"--out_dir={tmp_path / 'out'}", *source])


@pytest.mark.parametrize("setting", ["--topk=0", "--temperature=0", "--n_context=-1"])
def test_impossible_propagation_settings_stop_before_any_work(tmp_path, setting):
    message = "need --n_context >= 0, --topk >= 1 and --temperature > 0"
    with pytest.raises(ValueError, match=message):
        lp.main(["--task=davis", f"--data={tmp_path}", "--untrained=configs/s.py", setting])


# ----------------------------------------------------------------------------------------------
# End to end through the command line, with a randomly initialised tiny model.


TINY_CONFIG = "width = 32\nenc_layers = 1\nenc_heads = 2\ncore_layers = 1\ncore_heads = 2\n"


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_real_mini_davis_end_to_end(davis, tmp_path):
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    out = tmp_path / "out"
    line = lp.main(["--task=davis", f"--data={davis / 'davis2017-mini'}",
                    f"--untrained={tmp_path / 'tiny.py'}", "--resolution", "64", "112",
                    "--max_frames=6", f"--out_dir={out}", "--save_masks", "--device=cpu"])
    m = re.fullmatch(r"J&F-Mean (\d\.\d{3})  J-Mean (\d\.\d{3})  F-Mean (\d\.\d{3})  "
                     r"\(3 objects in 3 sequences\)", line)
    assert m, line
    jf, j, f = map(float, m.groups())
    assert abs(jf - (j + f) / 2) < 1.5e-3
    rows = _read_csv(out / "davis_per_sequence.csv")
    assert [r["sequence"] for r in rows] == ["blackswan", "car-shadow", "dog"]
    assert all(r["frames"] == "6" for r in rows)
    assert all(0 <= float(r["J-Mean"]) <= 1 and 0 <= float(r["F-Mean"]) <= 1 for r in rows)
    assert np.mean([float(r["J-Mean"]) for r in rows]) == pytest.approx(j, abs=1e-3)
    for seq in ("blackswan", "dog"):
        names = sorted(os.listdir(out / "masks" / seq))
        assert names == [f"{t:05d}.png" for t in range(6)]
        with Image.open(out / "masks" / seq / "00005.png") as im:
            assert im.mode == "P" and im.size == (854, 480)
            assert set(np.unique(np.array(im))) <= {0, 1}


def test_cli_encoder_features_long_horizon_vip_jhmdb(davis, tmp_path):
    (tmp_path / "tiny.py").write_text(TINY_CONFIG)
    tiny = [f"--untrained={tmp_path / 'tiny.py'}", "--device=cpu"]
    out = tmp_path / "lh"
    line = lp.main(["--task=davis", f"--data={davis / 'davis2017-mini'}", "--resolution", "48",
                    "80", "--sequences=car-shadow,dog", "--features=encoder", "--long_horizon",
                    "--horizons=4,8", f"--out_dir={out}", *tiny])
    assert line.startswith("J&F-Mean") and "(2 objects in 2 sequences)" in line
    table = _read_csv(out / "long_horizon.csv")
    assert [r["frames"] for r in table] == ["4", "8"] and table[0]["J&F relative to 4"] == "1.0000"
    ratio = float(table[1]["J&F-Mean"]) / float(table[0]["J&F-Mean"])
    assert float(table[1]["J&F relative to 4"]) == pytest.approx(ratio, abs=2e-4)
    assert (out / "long_horizon.png").stat().st_size > 0
    # VIP and JHMDB through the command line, on the fixtures.
    root, _ = _vip_fixture(tmp_path / "vip")
    line = lp.main(["--task=vip", f"--data={root}", "--resolution", "48", "64",
                    f"--out_dir={tmp_path / 'vip-out'}", *tiny])
    assert re.fullmatch(r"mIoU \d\.\d{3}  \(1 videos, 20 classes\)", line), line
    assert len(_read_csv(tmp_path / "vip-out" / "vip_per_class.csv")) == 20
    root, _ = _jhmdb_fixture(tmp_path / "jhmdb")
    line = lp.main(["--task=jhmdb", f"--data={root}", "--resolution", "96", "128",
                    f"--out_dir={tmp_path / 'jhmdb-out'}", *tiny])
    assert re.fullmatch(r"PCK@0\.1 \d\.\d{3}  PCK@0\.2 \d\.\d{3}  \(1 videos\)", line), line


# Official per-frame J and F (x 10^4) of OSVOS, see _osvos_reference.
OSVOS_REFERENCE = """
blackswan:J 9391 9456 9476 9456 9507 9504 9476 9438 9469 9469 9460 9469 9400 9407 9430 9434 9410
9382 9504 9048 9458 9498 9512 9456 9475 9421 9385 9384 9452 9438 9418 9256 9400 9302 9416 9406 9401
9430 9380 9457 9435 9451 9493 9490 9459 9468 9456 9464
blackswan:F 9619 9777 9815 9892 9913 9836 9708 9788 9799 9746 9764 9756 9747 9748 9772 9772 9779
9769 9806 9247 9657 9736 9731 9763 9724 9676 9686 9615 9724 9726 9835 9462 9686 9548 9730 9655 9714
9805 9699 9831 9805 9782 9870 9803 9886 9819 9801 9745
breakdance:J 9462 8630 7730 8148 8406 8201 7806 7329 8001 8733 9072 8680 7969 8757 8758 8828 8560
8208 8115 5370 4613 7503 6117 7639 7493 7150 7452 7522 6840 6522 6737 6442 6982 7157 6785 7130 7367
7289 7108 7285 6772 6321 5885 6565 6658 6682 6761 6559 7463 7619 8086 7610 7511 7108 6574 7841 7976
7892 7817 8717 8240 7795 8377 8183 6515 6809 6091 4841 4933 5009 6320 7832 8763 8572 7877 7771 6808
6119 4193 5259 5336 6354
breakdance:F 9824 8601 8539 8057 8611 8747 8533 7474 8357 9026 9292 8633 7361 8868 8802 8774 8277
7797 7782 6035 5431 7970 7121 8168 7903 7774 7939 8325 7574 6457 7354 6734 7776 7885 7230 7459 7975
7798 7546 7902 7455 5809 5461 7010 6965 5984 7451 7213 7336 7163 7652 7337 7193 7194 6439 7926 8040
7549 7930 9049 8589 7873 8415 8281 7313 7375 6964 5829 5952 6234 7097 8300 8813 8256 7756 7980 6810
6408 4900 5861 6017 6990
camel:J 9697 9714 9725 9685 9618 9633 9655 9684 9733 9733 9705 9554 9567 9555 9548 9470 9403 9540
9593 9609 9637 9595 9594 9579 9607 9509 9495 9485 9421 9367 9349 9236 9246 9282 9350 9324 8796 8731
8661 8526 8560 8523 8401 8327 8316 8343 8151 8268 7758 8087 8086 8095 8039 8046 8057 8045 8036 8015
8087 8016 7994 7927 7961 7881 7847 7853 7899 7887 7831 7814 7785 7754 7756 7737 7533 7617 7710 7663
7729 7510 7554 7497 7536 7257 7268 7300 7401 7350
camel:F 9940 10000 9990 9920 9590 9806 9827 9835 9975 9850 9915 9760 9764 9748 9593 9442 9503 9753
9866 9883 9949 9907 9857 9800 9987 9575 9670 9473 9549 9574 9547 9279 9545 9428 9514 9483 9167 9195
9169 9070 9101 9134 9070 8995 9038 8868 8694 8734 8319 8571 8603 8467 8350 8239 8370 8401 8197 8490
8613 8529 8448 8344 8409 8289 8202 8293 8284 8047 7983 8028 8220 7975 8089 8104 7707 8025 8127 7973
8152 7406 7874 7816 7760 7339 7502 7632 8040 8124
car-roundabout:J 9614 9407 8697 9197 9259 8602 8614 8730 9192 9037 8868 9089 8798 9231 9327 9399
9393 9315 9486 9555 9282 9723 9309 9622 9413 9813 9809 9787 9782 9562 9476 9078 9399 9408 9414 9461
9387 9328 9233 9111 8995 8837 9072 9262 9303 9261 9061 9466 9553 9632 9626 9394 9437 8989 8854 9266
9753 9604 9503 8971 8591 8674 8407 7708 7426 7333 6808 6771 6410 6317 6012 5567 5289
car-roundabout:F 9008 8585 8790 8036 8233 7577 7561 7775 7940 7591 7166 7758 7762 8326 8297 8682
8557 8344 8532 8903 8354 9345 8676 9169 8773 9635 9720 9511 9780 9090 9079 8089 8886 8967 8857 9149
8684 8613 8577 7941 7320 7190 7777 8318 8394 8262 7860 8868 9073 8889 9000 8842 8977 7947 7669 8491
9243 8850 9102 8428 7911 8197 8150 7403 7579 7208 7232 6818 6581 6702 6689 6230 6151
car-shadow:J 9705 9727 9692 9682 9644 9632 9590 9617 9520 9560 9557 9613 9584 9617 9622 9613 9607
9624 9628 9640 9677 9617 9642 9501 9565 9612 9564 7799 9482 9061 9147 9176 8835 7846 7641 8154 8609
7391
car-shadow:F 9904 9948 9976 9753 9811 9995 9325 9644 9421 9431 9454 9378 9470 9650 9504 9615 9493
9536 9691 10000 10000 9686 10000 9714 9652 9926 9947 6458 9496 8596 8893 8797 8580 7437 7155 7222
7997 6059
cows:J 9693 9705 9704 9698 9678 9709 9723 9686 9696 9660 9644 9542 9643 9640 9647 9643 9636 9632
9639 9651 9659 9648 9691 9503 9673 9677 9670 9685 9675 9700 9639 9652 9658 9568 9591 9653 9588 9649
9454 9613 9645 9519 9637 9400 9558 9516 9521 9559 9507 9444 9201 9194 9268 9254 9451 9464 9518 9422
9422 9512 9482 9145 9438 9413 9353 9427 9509 9524 9450 9488 9517 9486 9319 9502 9361 9563 9621 9567
9579 9483 9400 9503 9490 9468 9506 9474 9546 9466 9430 9066 9151 9493 9442 9409 9435 9322 9508 9515
9225 9331 9538 9405
cows:F 9734 9866 9819 9802 9665 9760 9901 9969 9957 9894 9771 9722 9571 9685 9693 9690 9791 9765
9747 9771 9735 9521 9480 9606 9690 9826 9828 9853 9840 9837 9796 9839 9876 9692 9680 9871 9647
9769 9575 9734 9888 9605 9786 9237 9719 9528 9363 9559 9503 9162 9197 9139 9391 9456 9662 9272
9277 9723 9756 9145 9032 9025 9262 9399 9172 9458 9615 9738 9553 9772 9900 9695 9347 9533 9316
9672 9781 9566 9609 9512 9256 9487 9475 9569 9638 9433 9594 9210 8858 8466 8898 9546 9455 9523
9493 8886 9428 9786 9300 9403 9934 9631
dance-twirl:J 9171 8863 8503 8799 8483 7030 6059 7997 4658 4880 7398 7646 8087 8450 6531 6813 6104
7254 6897 7303 7190 7128 8023 6961 6845 7490 7803 7376 7277 6509 5790 5724 4828 4955 5992 6048 4263
4159 3695 4380 4589 4151 4275 4449 5051 5344 5631 5401 7733 6829 6972 7479 7271 6268 5946 6293 6955
7279 7718 5957 7118 7301 7310 7172 7041 6003 6411 6798 6683 7274 7426 6467 4784 6180 6302 4780 4771
4683 6133 5711 5899 5740 4259 4583 5704 6830 6652 7017
dance-twirl:F 9893 9362 8637 8713 8874 7639 8132 8131 6837 7032 8006 8364 8313 8442 7710 8006 7853
7898 7730 7872 7679 7733 8693 7878 7560 7981 8117 7881 7526 7382 7005 6181 5688 5714 5862 6060
4453 4903 5367 6473 6959 6882 6915 7154 7304 7518 7959 7337 7459 6572 6545 6806 6564 6656 7055
7500 7570 7546 8291 6756 6789 6999 7614 6810 6998 6396 6566 6998 7592 7222 7760 6524 7156 6763
7288 6435 6354 5909 6608 6575 6612 6796 4966 5766 6393 6060 6685 6889
dog:J 9265 8933 7953 7541 7173 8597 9010 9454 9462 9462 9476 8954 4911 831 4384 4473 4762 6926 7378
8786 9242 9489 848 8730 9184 9260 9297 9384 9522 9439 9337 9439 9293 9478 8955 7353 9146 9207 8841
1356 1486 1522 1535 1548 1498 1555 1516 1516 1484 9369 9361 9307 9084 9172 9185 9499 9554 9533
dog:F 9171 8587 6695 6585 6675 7868 8323 9479 9786 9632 9807 8511 5255 430 5772 6442 5533 5314 6451
7842 9219 9473 1401 7337 8809 8550 8788 9309 9686 9684 9171 9167 9308 9345 8144 6117 8006 8652 7732
2450 1283 501 1689 1142 1532 199 1276 1702 3585 9157 9397 9273 8880 8659 9039 9653 9748 9619
drift-chicane:J 7241 7822 8671 7570 7592 8294 8611 7804 7525 7290 6022 6963 6430 6621 6075 5535 5348
6108 5266 5567 6043 5311 7188 8484 9194 8577 9195 8472 9068 9027 8931 8376 8510 8389 7791 7064 8144
8624 9233 8069 8407 8149 8495 8324 8561 8386 8226 8333 9065 9120
drift-chicane:F 8671 8496 9346 7694 7692 8377 8618 7563 7759 8169 6633 7591 7754 7567 7465 6584 6718
6525 6365 6354 5516 6800 7982 9250 9881 9022 9941 9379 9927 9543 9533 8824 9007 8778 7781 7667 8726
9010 9534 7640 8632 8629 9193 8826 9242 8815 8248 8494 9115 9570
drift-straight:J 8774 9197 8968 8527 8415 9037 9489 8747 8801 9130 9202 9342 9311 9347 9349 9662
9361 9107 8836 9204 9309 9374 9436 9203 9441 9223 7577 7382 7087 6403 7264 5771 1764 968 1051 1176
1622 1477 445 1003 245 148 154 2087 9334 9416 8746 510
drift-straight:F 9479 9932 9509 8484 9183 9624 9966 8499 8575 9497 9388 9723 9555 9337 9580 10000
9770 9041 8375 9529 9573 9525 9026 8438 8737 7665 5707 4864 4919 4215 5012 4431 4219 4338 3768 3620
3890 3198 2911 2628 1663 1415 1155 6185 9070 9440 8893 3699
goat:J 9224 9106 8768 9028 9023 8801 8874 8912 8873 8790 8909 8790 8867 8942 9124 8979 8995 9087
8858 8756 8979 8877 8849 8962 8814 9084 8744 8826 8657 8802 9044 8866 8497 8523 8720 8633 8682 8667
8624 8735 8682 8705 8777 8727 8918 8861 8912 8847 8567 8788 8682 8508 8783 8760 8986 8720 8807 8696
8720 8689 8705 8583 8796 8723 8476 8308 8230 8489 8339 8353 8312 8438 8265 8543 8755 8841 8399 8285
8064 8314 8419 8436 8172 8148 8171 8336 8437 8294
goat:F 9555 9369 8825 9068 9358 8863 8843 8681 8782 8624 9137 8938 8888 9201 9418 9121 9121
9268 9051 9037 9192 8646 8689 8784 8941 9515 9034 9128 8684 8727 9038 9174 8670 8612 8927 8908
9018 8649 8818 9092 8993 8652 8477 8884 8750 8848 8854 9098 8271 8944 8701 7976 8706 9041 9148
8917 9072 8600 8889 8991 9054 8355 8799 9091 8510 8623 8823 8966 8316 8429 8297 8333 8322 8937
8715 8918 8380 8004 7476 8122 8566 8576 8053 8061 7616 8186 8250 7830
libby:J 9304 8981 8525 4622 7717 8630 7698 7701 8450 9235 8202 8531 6540 8699 8756 8744 7214 8423
8339 8776 8883 7152 7152 7361 6907 7437 7295 6496 7853 6193 4822 4794 4249 3976 2875 2126 1323 3645
3524 3551 3865 3593 3799 4027 2646 2202 1993
libby:F 9972 9673 9349 7198 8733 8978 8504 8179 8920 9435 8534 8917 7807 9628 9623 9254 8421 8426
8375 9337 9728 7934 8199 8569 7523 8244 8235 7288 8686 7327 6025 6422 6464 6151 5539 5439 3664 4947
5205 5154 6067 6138 6227 6583 5406 4428 4221
parkour:J 9101 8885 9086 8784 8165 7990 8501 8098 8198 7835 8401 8596 8424 7984 8966 8403 9116 8775
8155 9210 8526 7573 7936 7276 6754 7285 7203 7601 7576 7615 7789 8274 8314 8510 8834 8793 8457 9057
9255 9414 8602 8965 8268 8558 9243 9163 9537 8926 9141 9006 8979 9314 9105 8764 8702 8462 8717 8354
8815 8911 8863 7475 6772 6497 6977 6575 6392 6082 6009 7542 7386 6126 6549 7535 5956 6355 8615 8073
7744 6058 6105 7045 6891 7518 6379 5906 6337 5812 6605 7145 5446 5775 5747 6656 5014 3957 3780 5717
parkour:F 9839 9381 9743 9025 8296 8088 8443 8425 8771 8014 8686 8592 8297 6882 8881 8039 9499 9379
8498 9463 8714 6872 6879 5888 5483 5844 5540 6853 7069 6823 7156 7754 7793 8167 8725 8998 8477 9360
9780 9864 8957 9134 8574 8829 9281 9067 9771 8807 9163 9036 8824 9118 8547 8038 8472 8073 8796 7866
8488 8709 8904 6611 5671 5348 6023 5777 5469 4462 4603 5594 5417 4315 4989 6493 5114 5574 7391 6343
6478 4884 5618 6587 6274 6707 5795 5829 6314 6107 6794 7836 6374 6538 5893 6074 5245 4705 4576 5478
"""
