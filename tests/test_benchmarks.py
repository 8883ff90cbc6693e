"""The benchmark scripts' decision rules: how a claim is judged from seeded rows, and which rows may share a table."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablations  # noqa: E402
from common import paired_verdict, spread  # noqa: E402


def test_spread_is_mean_and_sample_sd_and_marks_a_single_value():
    assert spread([1.0, 2.0, 3.0]) == "2.00 +- 1.00"
    assert spread([0.5], digits=3, single=" (1 seed)") == "0.500 (1 seed)"
    assert spread([]) == "-"


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        ({0: 31.0, 1: 31.2, 2: 30.9}, {0: 30.0, 1: 30.1, 2: 30.0}, "holds"),
        ({0: 30.0, 1: 30.1, 2: 30.0}, {0: 31.0, 1: 31.2, 2: 30.9}, "does not hold (the opposite is seen)"),
        ({0: 31.0, 1: 29.0, 2: 30.2}, {0: 30.0, 1: 30.0, 2: 30.0}, "cannot be told apart from run-to-run noise"),
        ({0: 31.0, 1: 31.0}, {0: 30.0, 1: 30.0}, "undecided: fewer than 3 seeds"),
        ({}, {0: 30.0}, "not run yet"),
    ],
)
def test_a_claim_holds_only_when_the_paired_difference_clears_twice_its_spread(a, b, verdict):
    assert paired_verdict(a, b)[1] == verdict


def test_differences_are_paired_by_seed_and_unpaired_seeds_are_left_out():
    # seed 3 exists only in a: were it counted, the mean difference would be far from +1
    text, v = paired_verdict({0: 31.0, 1: 32.0, 2: 33.0, 3: 99.0}, {0: 30.0, 1: 31.0, 2: 32.0})
    assert text == "+1.00 +- 0.00 (3 seeds)" and v == "holds"


def _teacher(ka: int, seed: int, psnr_of_kb) -> dict:
    sweep = [{"k_b": kb, "psnr": psnr_of_kb(kb, "all"),
              "groups": {g: {"psnr": psnr_of_kb(kb, g)} for g in ("flat", "textured")}} for kb in ablations.KBS]
    return {"name": f"teacher_ka{ka}_s{seed}", "spec": {"kind": "teacher", "k_a": ka, "seed": seed},
            "scores": {"sweep": sweep, "best_step": 1000}}


def test_claims_read_the_texture_slopes_and_the_student_rows_per_seed():
    results = {}
    for seed in range(3):
        # flat PSNR rises by 0.1 dB per pixel of k_b, textured falls by 0.2; k_a = 5 falls faster on texture
        for ka, fall in ((5, 0.3), (9, 0.2)):
            r = _teacher(ka, seed, lambda kb, g, fall=fall, seed=seed: 30 + seed + {"all": 0, "flat": 0.1 * kb,
                                                                                      "textured": -fall * kb}[g])
            results[r["name"]] = r
        for student, psnr in (("A", 29.0), ("B", 31.0)):
            results[f"student_{student}_multi_s{seed}"] = {
                "name": f"student_{student}_multi_s{seed}", "spec": {"kind": "student", "seed": seed},
                "scores": {"psnr": psnr + seed + 0.01 * seed}}
    found = {text: (paper, a, b) for text, paper, a, b in ablations.claims(results)}

    _, slope, zero = next(v for k, v in found.items() if k.startswith("S5.1: flat regions gain"))
    assert slope == pytest.approx({0: 0.1, 1: 0.1, 2: 0.1}) and zero == {0: 0.0, 1: 0.0, 2: 0.0}
    _, zero, slope = next(v for k, v in found.items() if k.startswith("S5.1: textured regions lose"))
    assert slope == pytest.approx({0: -0.2, 1: -0.2, 2: -0.2})
    _, drop5, drop9 = next(v for k, v in found.items() if "less harmful to texture" in k)
    assert drop5 == pytest.approx(dict.fromkeys(range(3), 2.4))  # 0.3 dB per pixel over k_b 3 -> 11
    assert drop9 == pytest.approx(dict.fromkeys(range(3), 1.6))
    _, b, a = found["Tab. 3: depth helps more than downsampling: B beats A"]
    assert paired_verdict(b, a) == ("+2.00 +- 0.00 (3 seeds)", "holds")
    _, student_a, teacher = next(v for k, v in found.items() if k.startswith("Tab. 3: student A gains"))
    assert teacher == {0: 30.0, 1: 31.0, 2: 32.0} and paired_verdict(student_a, teacher)[1].startswith("does not hold")
    # rows not run yet give no verdict rather than a made-up one
    assert paired_verdict(*found["Tab. 3: C beats B"][1:])[1] == "not run yet"
    assert paired_verdict(*found["Diagnostic (ours): C trained from scratch beats B"][1:])[1] == "not run yet"


def test_the_core_rows_are_a_subset_of_all_rows_and_keep_every_claims_rows():
    full, core = dict(ablations.rows_for(["teacher", "student", "fusion"], [0])), dict(
        ablations.rows_for(["teacher", "student", "fusion"], [0], core=True))
    assert set(core) < set(full) and all(full[n] == spec for n, spec in core.items())
    for name in ("teacher_ka5_s0", "teacher_ka9_s0", "student_A_multi_s0", "student_B_multi_s0",
                 "student_C_multi_s0", "student_C_mean_s0", "student_C_partition_s0",
                 "student_C_multi_scratch_s0", "fusion_2_s0", "fusion_7_s0"):
        assert name in core


def test_rows_of_another_budget_are_named_and_refused():
    b = {**ablations.BUDGET, "precision": "bf16"}
    rows = {"teacher_ka9_s0": {"budget": b}, "teacher_ka9_s1": {"budget": {**b, "precision": "fp32"}}}
    assert ablations.mixed_budget({"teacher_ka9_s0": rows["teacher_ka9_s0"]}, b) is None
    problem = ablations.mixed_budget(rows, b)
    assert problem.startswith("teacher_ka9_s1.json: ") and "precision fp32 (this run: bf16)" in problem


def test_no_benchmark_script_imports_another():
    """What two scripts share lives in ``common.py``: a script is run, never imported by another script."""
    import ast

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    scripts = {p.stem for p in folder.glob("*.py")} - {"common"}
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not {n.split(".")[0] for n in names} & scripts, f"{path.name} imports {names}"
