"""The demo end to end on one small photo: the table holds the classical baselines beside the networks."""

from __future__ import annotations

import json

import pytest

from atbsn.demo import run_demo


@pytest.mark.slow  # CI runs the whole demo too (make demo)
def test_the_demo_scores_the_student_beside_nlm_and_bm3d(tmp_path):
    summary = run_demo(tmp_path / "demo", progress=False, photos=("coffee",), size=64, steps=(3, 2))
    assert summary["fit"]["teacher_steps"] == 3 and summary["fit"]["student_steps"] == 2
    methods = [r["method"] for r in summary["rows"]]
    assert methods[:3] == ["noisy input", "non-local means (OpenCV)", "BM3D (true noise level)"]
    assert methods[-1] == "student C" and summary["student_minus_best_classical_db"] is not None
    for row in summary["rows"][1:3]:
        assert row["psnr"] > summary["rows"][0]["psnr"] and row["seconds_per_image"] > 0
    written = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert written["images"] == 1 and set(written["student_above_all_classical"]) == {"psnr", "ssim_rgb", "ssim_y"}
    assert (tmp_path / "demo" / "side_by_side.png").exists()
    assert (tmp_path / "demo" / "denoised" / "BM3D" / "coffee.png").exists()


def test_the_demo_recipe_is_in_steps_so_its_result_does_not_depend_on_the_cpu(tmp_path, monkeypatch):
    """No time budget: the same steps on a fast and a slow CPU; --minutes stays available."""
    import atbsn.demo as demo

    seen = []
    monkeypatch.setattr(demo, "fit", lambda photos, out, cfg, progress: seen.append(cfg) or (_ for _ in ()).throw(
        KeyboardInterrupt))
    for kwargs in ({}, {"minutes": 1.5}):
        try:
            demo.run_demo(tmp_path / "d", progress=False, photos=("coffee",), size=32, **kwargs)
        except KeyboardInterrupt:
            pass
    assert (seen[0].teacher_steps, seen[0].student_steps, seen[0].minutes) == (*demo.STEPS, None)
    assert seen[1].minutes == 1.5
    for cfg in seen:
        assert all(getattr(cfg, k) == v for k, v in demo.RECIPE.items())
