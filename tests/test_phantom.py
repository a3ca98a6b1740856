"""Synthetic DSA generator: determinism, DSA-like behaviour, scribbles, CLI."""
import numpy as np
import pytest
from scipy import ndimage, stats

from dias_dist import cli
from dias_dist.data import dias
from dias_dist.data.phantom import (CONDUCTING_RADIUS, anatomy, bolus_opacity, generate_sequence, grow_tree,
                                    sequence_rng, slowness)
from dias_dist.data.scribbles import rdfa_scribble, sale_scribble


def test_deterministic_per_seed():
    a = generate_sequence(96, sequence_rng(5, 2))
    b = generate_sequence(96, sequence_rng(5, 2))
    c = generate_sequence(96, sequence_rng(6, 2))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.visible, b.visible) and np.array_equal(a.frame_times, b.frame_times)
    assert not (a.frames.shape == c.frames.shape and np.array_equal(a.frames, c.frames))


def test_tree_radii_follow_murray_range():
    tree = grow_tree(800, np.random.default_rng(0))
    assert 6.5 <= tree.radius.max() <= 8.5  # ICA 13-17 px wide at ~0.3 mm/px
    assert tree.radius.min() < 1.3  # distal branches reach ~1 px
    assert len(np.unique(tree.layer)) > 1  # overlapping projection layers


def test_arrival_grows_with_path_delay_and_shrinks_with_radius():
    tree = grow_tree(800, np.random.default_rng(3))
    trunk_r = tree.radius[0]
    # within a segment (consecutive points, path +1 px) the delay grows by v_trunk / v(r): the conducting
    # arteries (r >= r_c) at the trunk's velocity, thinner branches slower in proportion to 1 / r
    moved = np.hypot(*np.diff(tree.xy, axis=0).T) > 0.5  # (a child's first point repeats its parent's last)
    step = np.flatnonzero((np.diff(tree.path_length) == 1) & moved) + 1
    increments = tree.delay[step] - tree.delay[step - 1]
    assert np.all(increments >= 1 - 1e-9)  # nothing is faster than the trunk
    assert np.allclose(increments, slowness(tree.radius[step], trunk_r))
    r_c = CONDUCTING_RADIUS * trunk_r
    thin, thick = tree.radius[step] < 0.45 * r_c, tree.radius[step] > r_c
    assert thin.sum() > 100 and thick.sum() > 100
    assert np.allclose(increments[thick], 1.0)
    assert np.median(increments[thin]) > 2 * np.median(increments[thick])
    assert np.all(np.diff(slowness(np.linspace(0.5, 8, 50), 7.5)) <= 0)  # never slower when wider
    # the bolus reaches a point later the larger its delay, and the opacity rises with time
    t = np.linspace(0, 1.6, 9)  # during the 1.5 s plateau
    opacity = bolus_opacity(t[None, :] - np.array([0.2, 0.8])[:, None], 1.5, 0.1, 0.4)
    assert np.all(opacity[0] >= opacity[1]) and opacity[1, 0] == 0 and opacity[0, -1] > 0.99
    assert np.all(np.diff(opacity[1]) >= 0)
    assert bolus_opacity(np.array([3.0]), 1.5, 0.1, 0.4)[0] < 0.05  # washed out after the plateau


def test_first_frame_shows_the_proximal_tree_and_later_frames_the_distal_one():
    big_first, thin_first, thin_last = [], [], []
    for seq_id in range(6):
        seq = generate_sequence(160, sequence_rng(0, seq_id))
        big = seq.radius >= 3 * np.sqrt(160 / 800)
        thin = (seq.label > 0) & ~big
        big_first.append(seq.visible[0][big].mean())
        thin_first.append(seq.visible[0][thin].mean())
        thin_last.append(seq.visible[-1][thin].mean())
        # vessels are dark on a grey background (DSA) where they are shown
        frame = seq.frames[0].astype(float)
        assert frame[seq.visible[0] & big].mean() < frame[seq.label == 0].mean() - 20
    assert np.mean(big_first) > 0.7
    assert np.mean(thin_first) < np.mean(big_first) - 0.2
    assert np.mean(thin_last) > np.mean(thin_first) + 0.3


def test_label_is_the_union_of_frames_above_threshold():
    for seq_id in range(4):
        seq = generate_sequence(96, sequence_rng(2, seq_id), late_phase=seq_id % 2 == 1)
        assert np.array_equal(seq.label > 0, seq.visible.any(axis=0))
        assert np.all(seq.radius[seq.label == 0] == 0) and np.all(seq.radius[seq.label > 0] >= 0.8 * 0.5)
        assert np.all(np.diff(seq.frame_times) > 0)


@pytest.mark.parametrize("bounds,rate", [((4, 14), 4.0), ((4, 14), 30.0), ((8, 8), 4.0), ((5, 6), 15.0)])
def test_frame_count_within_bounds_for_every_seed(bounds, rate):
    low, high = bounds
    counts = [generate_sequence(48, sequence_rng(seed, 0), min_frames=low, max_frames=high,
                                frame_rate=rate).frames.shape[0] for seed in range(20)]
    assert all(low <= c <= high for c in counts)
    if bounds == (4, 14) and rate == 4.0:
        assert len(set(counts)) > 2  # the injection and the transit time of each tree, not a constant, set T


def test_arterial_phase_ends_with_the_injection_plateau():
    spans, counts = [], []
    for seed in range(12):
        seq = generate_sequence(64, sequence_rng(seed, 1))  # a small tree fills long before the plateau ends
        times = seq.frame_times
        counts.append(len(times))
        spans.append(seq.injection_s)
        # the last frame is the first acquisition after the plateau ends at the root: wash-out starts there
        assert times[-2] < seq.injection_s <= times[-1] + 1e-9
    assert 1.0 <= min(spans) and max(spans) <= 2.0
    assert stats.spearmanr(spans, counts).statistic > 0.7  # a longer injection, a longer run


def test_frame_rate_sets_the_spacing_and_bad_values_are_errors():
    seq = generate_sequence(64, sequence_rng(0, 0), frame_rate=7.0)
    assert np.allclose(np.diff(seq.frame_times), 1 / 7.0)
    with pytest.raises(ValueError, match="frame rate"):
        generate_sequence(64, sequence_rng(0, 0), frame_rate=0)
    with pytest.raises(ValueError, match="size"):
        generate_sequence(16, sequence_rng(0, 0))


def test_late_phase_adds_unlabelled_signal_only_at_the_end():
    base = generate_sequence(96, sequence_rng(1, 1))
    late = generate_sequence(96, sequence_rng(1, 1), late_phase=True)
    assert np.array_equal(base.label, late.label)
    background = base.label == 0
    darker = base.frames[-1][background].astype(float).mean() - late.frames[-1][background].astype(float).mean()
    assert darker > 0.5


def test_skull_projects_over_the_whole_field_with_texture():
    body = anatomy(256, np.random.default_rng(4))
    centre = body[96:160, 96:160]
    # a projection crosses both tables of the calvarium everywhere inside the head, not only at its rim
    assert centre.mean() > 0.2
    assert body.max() > 2.5 * centre.mean()  # the tangential rim is denser still
    fine = centre - ndimage.gaussian_filter(centre, 4)
    assert fine.std() > 0.02  # diploe texture over the brain: what patient motion turns into artefacts


def test_subtraction_residue_grows_with_patient_motion():
    still = generate_sequence(128, sequence_rng(3, 5), motion_px=0.0)
    moved = generate_sequence(128, sequence_rng(3, 5), motion_px=6.0)
    assert np.array_equal(still.label, moved.label)  # motion changes the image, not the label
    background = still.label == 0
    rough = [float((s.frames[0].astype(float) - ndimage.gaussian_filter(s.frames[0].astype(float), 3))[background].std())
             for s in (still, moved)]
    assert rough[1] > 1.2 * rough[0]


def test_mask_noise_is_shared_by_every_frame():
    seq = generate_sequence(128, sequence_rng(0, 2), motion_px=0.0, min_frames=6, max_frames=6)
    background = ndimage.binary_erosion(seq.label == 0, iterations=4)
    a, b = (seq.frames[k].astype(float)[background] for k in (2, 4))
    # with perfect registration the background is noise only; one mask subtracted from both frames
    # correlates them (independent frame noise alone would not)
    assert np.corrcoef(a, b)[0, 1] > 0.1


def test_catheter_is_dark_unlabelled_and_shown_from_the_first_frame():
    for seq_id in range(3):
        # no motion, no quantum noise: outside the vessels the subtraction leaves only the catheter
        seq = generate_sequence(256, sequence_rng(1, seq_id), motion_px=0.0, noise=0.0)
        background = seq.label == 0
        grey = np.median(seq.frames[0][background])
        dark = (seq.frames.max(axis=0) < grey - 15) & ndimage.binary_erosion(background, iterations=1)
        assert dark.sum() >= 25  # the catheter below the ICA: dark in every frame, not in the label


def test_rdfa_scribble_properties():
    label = np.zeros((120, 120), np.uint8)
    label[30:42, 5:115] = 1  # a thick vessel
    label[60:63, 10:110] = 1  # a thin one
    scribble = rdfa_scribble(label, np.random.default_rng(0), max_shift_px=0, max_rotation_deg=0)
    assert set(np.unique(scribble)) == {0, 1, 255}
    assert np.all(label[scribble == 1] == 1) and np.all(label[scribble == 0] == 0)
    assert (scribble[30:42] == 1).sum() > 50  # the `> 0` skeleton fix: strokes exist
    again = rdfa_scribble(label, np.random.default_rng(0), max_shift_px=0, max_rotation_deg=0)
    assert np.array_equal(scribble, again)


def test_rdfa_walk_is_iterative_on_long_paths():
    label = np.zeros((14, 5000), np.uint8)
    label[3:10, 2:4998] = 1  # skeleton ~5000 px long: a recursive walk would exceed the recursion limit
    scribble = rdfa_scribble(label, np.random.default_rng(1), max_shift_px=0, max_rotation_deg=0)
    assert (scribble == 1).sum() > 3 * 4000


def test_sale_scribble_properties():
    seq = generate_sequence(128, sequence_rng(0, 1))
    scribble = sale_scribble(seq.label, np.random.default_rng(0))
    assert set(np.unique(scribble)) <= {0, 1, 255}
    assert (scribble == 1).any() and (scribble == 0).any()
    assert np.all(seq.label[scribble == 1] == 1) and np.all(seq.label[scribble == 0] == 0)


def test_cli_writes_release_layout(tmp_path):
    out = tmp_path / "ph"
    assert cli.main(["phantom", str(out), "--size", "64", "--train", "2", "--val", "1", "--test", "1",
                     "--unlabeled", "1", "--seed", "4"]) == 0
    assert (out / "preview.png").is_file()
    assert (out / "training/scribble_labels/RDFA/label_s0.png").is_file()
    assert (out / "unlabeled_DSA/image_s4_i0.png").is_file()
    assert [s.seq_id for s in dias.read_split(out, "test")] == [3]


def test_progress_bar_counts_sequences_with_rate(tmp_path, capsys):
    from dias_dist.data.phantom_cli import write_phantom_dataset
    from dias_dist.data.shards import write_shards

    write_phantom_dataset(tmp_path / "ph", size=32, train=2, val=0, test=1, unlabeled=0, preview=False, progress=True)
    err = capsys.readouterr().err
    assert "phantom" in err and "3/3" in err and "seq/s" in err
    write_phantom_dataset(tmp_path / "quiet", size=32, train=1, val=0, test=0, unlabeled=0, preview=False,
                          progress=False)
    assert capsys.readouterr().err == ""
    write_shards(tmp_path / "ph", tmp_path / "shards", progress=True)
    err = capsys.readouterr().err
    assert "shard training" in err and "2/2" in err and "shard test" in err and "1/1" in err


def test_preview_panels_are_frames_minip_label_and_scribbles_each_captioned():
    from dias_dist.data.phantom_cli import preview_image

    seq = generate_sequence(64, sequence_rng(0, 3))
    scribbles = {"RDFA": rdfa_scribble(seq.label, np.random.default_rng(0))}
    image = preview_image(seq.frames, seq.label, scribbles, seq.frame_times, columns=4)
    panels = len(seq.frames) + 3
    rows = -(-panels // 4)
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape[1] == 4 * (64 + 4)
    caption = (image.shape[0] - rows * (64 + 4)) // rows
    assert caption >= 10  # a caption strip above every row of panels
    strip = image[:caption, :64]
    assert (strip < 128).any() and (strip > 250).mean() > 0.5  # dark text on white
    minip_panel = len(seq.frames)
    y, x = (minip_panel // 4) * (64 + caption + 4) + caption, (minip_panel % 4) * (64 + 4)
    assert np.array_equal(image[y:y + 64, x:x + 64, 0], seq.frames.min(axis=0))


def test_every_phantom_option_is_documented():
    from dias_dist import cli

    _, commands = cli.build_parser()
    undocumented = [a.dest for a in commands["phantom"]._actions if not a.help]
    assert undocumented == []
