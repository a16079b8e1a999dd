"""The demo's goal rows: computed from the numbers, met and unmet alike, and honest about what is missing."""

from __future__ import annotations

from vidiff.evaluation.goals import evaluate_goals, goals_markdown


def rows(trained_psnr, identity_psnr=16.7, vae=22.0, ssim=0.7, colorfulness=10.0, cdc=0.01):
    return {
        "identity": {"psnr": identity_psnr, "ssim": 0.8, "colorfulness": 0.0, "cdc": 0.012},
        "VAE upper bound": {"psnr": vae, "ssim": 0.77},
        "target": {"psnr": 100.0, "colorfulness": 20.0, "cdc": 0.008},
        "untrained": {"psnr": 9.0, "ssim": 0.1},
        "trained": {"psnr": trained_psnr, "ssim": ssim, "colorfulness": colorfulness, "cdc": cdc},
    }


def by_goal(goals, task, text):
    return next(g for g in goals if g["task"] == task and g["goal"] == text)


def test_goals_follow_the_numbers():
    good = evaluate_goals({"dehaze": rows(20.0), "recolor": rows(21.0, colorfulness=10.0, cdc=0.016)})
    bad = evaluate_goals({"dehaze": rows(15.0, ssim=0.5), "recolor": rows(21.0, colorfulness=9.9, cdc=0.0161)})
    assert by_goal(good, "dehaze", "trained PSNR > identity")["met"] is True
    assert by_goal(bad, "dehaze", "trained PSNR > identity")["met"] is False
    # the threshold is the target's own number, halved / doubled
    assert by_goal(good, "recolor", "trained colourfulness >= half the target's")["met"] is True
    assert by_goal(bad, "recolor", "trained colourfulness >= half the target's")["met"] is False
    cdc = by_goal(good, "recolor", "trained CDC <= 2x the target's")
    assert cdc["met"] is True and cdc["value"] == 0.016 and cdc["threshold"] == 0.016
    assert by_goal(bad, "recolor", "trained CDC <= 2x the target's")["met"] is False
    assert by_goal(bad, "dehaze", "trained SSIM >= 0.6 (follows the source's structure)")["met"] is False
    # "within 3 dB of the bound" on every task present
    assert {g["task"] for g in good if g["goal"] == "trained PSNR within 3 dB of the VAE bound"} == {
        "dehaze",
        "recolor",
    }


def test_missing_tasks_and_numbers_are_not_met():
    goals = evaluate_goals({"dehaze": {"trained": {"psnr": 20.0}}})
    rvos = by_goal(goals, "rvos", "J&F >= 0.5 on the held-out clip")
    assert rvos["met"] is False and "not measured" in rvos["note"]
    identity = by_goal(goals, "dehaze", "trained PSNR > identity")
    assert identity["met"] is False and identity["threshold"] is None and "missing" in identity["note"]
    table = goals_markdown(goals)
    assert table[0].startswith("| task | goal") and any("✗" in line for line in table)


def test_rvos_is_held_to_jf_not_pixels():
    rvos = {"identity": {"jf": 0.0}, "untrained": {"jf": 0.14}, "trained": {"jf": 0.62}}
    goals = evaluate_goals({"dehaze": rows(20.0), "rvos": rvos})
    assert by_goal(goals, "rvos", "J&F >= 0.5 on the held-out clip")["met"] is True
    assert by_goal(goals, "rvos", "trained J&F > untrained")["met"] is True
    # the pixel goals for "all" cover the pixel tasks only: no rvos row that could never be met
    assert not [g for g in goals if g["task"] == "rvos" and g["metric"] in ("psnr", "ssim")]
    low = evaluate_goals({"rvos": {**rvos, "trained": {"jf": 0.49}}})
    assert by_goal(low, "rvos", "J&F >= 0.5 on the held-out clip")["met"] is False
