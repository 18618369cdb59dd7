"""Issue 17, the file side: verify names its cases and reasons, dX, hostile files, CLI pins."""
import io
import json
import re
import time
import zipfile

import numpy as np
import pytest

import implicit_gd as ig


def run(capsys, *argv):
    """main(argv + --json): (exit status, the JSON last line, stdout, stderr)."""
    status = ig.main(list(argv) + ["--json"])
    out, err = capsys.readouterr()
    return status, json.loads(out.splitlines()[-1]), out, err


def arrays_of(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save(path, arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    path = tmp_path_factory.mktemp("extra") / "golden.npz"
    ig.export_golden(path)
    return path


def one_case(path, A, gamma, N, d=1, **extra):
    """A one-case file: random W, v, X, y, zero outputs (a solve then runs, and fails)."""
    rng, m = np.random.default_rng(0), len(A)
    case = {"A": A, "W": rng.standard_normal((m, d)), "v": rng.standard_normal(m),
            "X": rng.standard_normal((N, d)), "y": rng.standard_normal(N),
            "gamma": np.float64(gamma), "Z": np.zeros((N, m)), "yhat": np.zeros(N),
            "loss": np.float64(0), "dA": np.zeros((m, m)), "dW": np.zeros((m, d)),
            "dv": np.zeros(m), **extra}
    np.savez_compressed(path, **{"meta/version": np.int64(1), "meta/cases": np.int64(1)},
                        **{f"case0/{k}": v for k, v in case.items()})
    return path


# ---- names and reasons ----


def test_rows_name_their_case_and_canonical_reasons_name_the_input(golden, tmp_path, capsys):
    arrays = arrays_of(golden)
    arrays["case3/X"] = np.nextafter(arrays["case3/X"], 1.0)  # one ulp off: not canonical
    path = save(tmp_path / "moved.npz", arrays)
    status, s, out, _ = run(capsys, "verify", str(path), "--canonical")
    assert status == 1 and re.search(r"^case6 dead unit +dA ", out, re.M)
    assert re.search(r"^case3 +dA ", out, re.M)  # no longer 'm < N': named by its prefix only
    why = "no case has its inputs bit for bit; case3, where export writes it, differs in X"
    assert s["canonical"]["reasons"] == {"m < N": why} and f"'m < N': {why}" in out
    assert s["cases"]["case3"]["canonical"] is None
    assert s["cases"]["case3"]["canonical_note"] == "not a canonical case: against 'm < N', it differs in X"


def test_a_failing_or_incomplete_canonical_case_says_which_quantity(golden, tmp_path):
    arrays = arrays_of(golden)
    arrays["case2/dW"] = 2 * arrays["case2/dW"]
    for key in ("train", "lr", "steps", "gd_A", "gd_W", "gd_v", "gd_loss"):
        del arrays[f"case0/{key}"]
    reasons = ig.verify_golden(save(tmp_path / "f.npz", arrays))["canonical"]["reasons"]
    assert reasons == {
        "tiny": "no case has its inputs bit for bit; case0, where export writes it, lacks "
                "train, lr, steps",
        "near the edge, oscillating": "case2 has its inputs; it fails dW (error 1, limit 1e-08)"}


def test_the_key_scheme_error_names_the_scheme_and_the_keys_found(golden, tmp_path):
    arrays = {k.replace("case", "case_", 1) if k.startswith("case") else k: v
              for k, v in arrays_of(golden).items()}
    problems = ig.verify_golden(save(tmp_path / "u.npz", arrays))["problems"]
    assert len(problems) == 1 and "expected the keys case0/... to case9/..." in problems[0]
    assert "found 10 case prefixes: case_0/..., case_1/..." in problems[0]


def test_a_nan_output_is_reported_as_nan_and_fails(golden, tmp_path, capsys):
    arrays = arrays_of(golden)
    arrays["case1/dv"] = np.full_like(arrays["case1/dv"], np.nan)
    status, s, out, _ = run(capsys, "verify", str(save(tmp_path / "nan.npz", arrays)))
    assert status == 1 and s["failed"] == ["case1/dv"]
    assert re.search(r"^case1 tiny gamma +dv +nan +FAIL", out, re.M) and " inf " not in out
    assert "it fails dv (error nan" in s["canonical"]["reasons"]["tiny gamma"]


# ---- dX = G W ----


def test_exported_dX_is_the_input_gradient_by_central_differences(golden):
    case = {k.split("/")[1]: v for k, v in arrays_of(golden).items() if k.startswith("case0/")}
    params, X, y, gamma = ig.Params(case["A"], case["W"], case["v"]), case["X"], case["y"], case["gamma"]
    E = np.random.default_rng(1).standard_normal(X.shape)
    phi = [ig.loss_and_grad(params, X + s * E, y, gamma, wrt="v", tol=1e-13)[0] for s in (1e-4, -1e-4)]
    fd = (phi[0] - phi[1]) / 2e-4
    # 1e-6: central differences at h = 1e-4 (error ~h^2) on a loss with no kink in this case,
    # solved to 1e-13 (error ~1e-13 / h); a wrong dX (doubled, G^T for G) is off by O(1)
    assert abs(fd - np.vdot(case["dX"], E)) <= 1e-6 * abs(fd), (fd, np.vdot(case["dX"], E))
    assert all(arrays_of(golden)[f"case{c}/dX"].shape == arrays_of(golden)[f"case{c}/X"].shape
               for c in range(10))


def test_verify_compares_dX_names_it_unchecked_when_absent_and_names_unknown_keys(golden, tmp_path, capsys):
    arrays = arrays_of(golden)
    doubled = {**arrays, "case4/dX": 2 * arrays["case4/dX"]}
    report = ig.verify_golden(save(tmp_path / "d.npz", doubled))
    assert [(r[0], r[1], r[2]) for r in report["rows"] if not r[4]] == [("case4", "dX", 1.0)]
    older = {k: v for k, v in arrays.items() if not k.endswith("/dX")}
    status, s, out, _ = run(capsys, "verify", str(save(tmp_path / "o.npz", older)), "--canonical")
    assert status == 0 and s["not_checked"] == {"dX": [f"case{c}" for c in range(10)]}
    assert "not checked: dX, absent from case0, case1, case2, ... (10 of 10 cases)" in out
    extra = {**arrays, "case0/dx": arrays["case0/dX"]}
    report = ig.verify_golden(save(tmp_path / "x.npz", extra))
    assert not report["passed"] and report["problems"][0].startswith("case0/dx: unknown key")


# ---- hostile files: a verdict or a named refusal, up front ----


def test_a_corrupted_central_directory_is_an_unreadable_file(golden, tmp_path, capsys):
    raw = golden.read_bytes()
    i = raw.find(b"PK\x01\x02")
    path = tmp_path / "cd.npz"
    path.write_bytes(raw[:i] + b"PK\x09\x09" + raw[i + 4:])
    assert zipfile.is_zipfile(path)
    with pytest.raises(ValueError, match="not a readable zip archive"):
        ig.verify_golden(path)
    status, s, out, err = run(capsys, "verify", str(path))
    assert status == 2 and "not a readable zip archive" in s["error"] and "Traceback" not in err


def test_the_work_limit_counts_the_sweeps_near_the_edge(tmp_path):
    # the 38 kB file: rho = 0.9999, N = 4096, m = 128, d = 1 (ran > 60 s); one sweep a
    # solve (the old model) would be ~1e8 multiply-adds: the sweeps, S = 2 max_iter, refuse it
    path = one_case(tmp_path / "edge.npz", (0.9999 / 0.25) * np.eye(128), 0.25, 4096)
    tick = time.perf_counter()
    report = ig.verify_golden(path)
    assert time.perf_counter() - tick < 5 and not report["rows"]
    assert "S = 20000 sweeps in case0, whose certified rho is 0.9999" in report["problems"][0]
    # same shapes, scaled-down limit: rho decides (S = 136 at rho 0.5, 20000 at rho 0.9999)
    for rho, refused in ((0.5, False), (0.9999, True)):
        path = one_case(tmp_path / f"r{rho}.npz", (rho / 0.25) * np.eye(8), 0.25, 16)
        report = ig.verify_golden(path, max_work=2**26)
        assert (not report["rows"]) == refused, (rho, report["problems"])


def test_many_tiny_cases_are_refused_up_front_by_the_zip_directory(tmp_path):
    count, arrays = 300, {"meta/version": np.int64(1)}
    for c in range(count):
        arrays.update({f"case{c}/{k}": np.zeros((1, 1)) for k in ("A", "W", "X", "Z", "dA", "dW")})
        arrays.update({f"case{c}/{k}": np.zeros(1) for k in ("v", "y", "yhat", "dv")})
        arrays.update({f"case{c}/{k}": np.float64(0.5) for k in ("gamma", "loss")})
    arrays["meta/cases"] = np.int64(count)
    path = save(tmp_path / "many.npz", arrays)  # 3600 members, 0.5 MB, directory ~0.2 MB
    tick = time.perf_counter()
    report = ig.verify_golden(path, max_mb=2)  # the members alone hold 0.5 MB
    assert time.perf_counter() - tick < 1 and not report["rows"]
    assert report["problems"][0].startswith("refused: the zip's directory is")
    # within max_mb, the fixed cost of a case, 2^25, counts: 300 of them need more than 1e10
    report = ig.verify_golden(path, max_work=1e10)
    assert not report["rows"] and "at least, over max_work = 1e+10" in report["problems"][0]


# ---- pins ----


def test_demo_exits_1_on_an_early_stop_when_the_other_checks_pass(capsys):
    status, s, _, _ = run(capsys, "demo", "--n", "8", "--d", "4", "--dt", "0.0601")
    assert s["gf_failure"].startswith("Euler step too large") and s["reached_target"]
    assert s["pl_holds"] and s["gf_certificate_holds"] and s["well_posed_throughout"]
    assert status == 1 and not s["passed"]


def test_max_mb_counts_a_members_uncompressed_size(golden, tmp_path):
    path = tmp_path / "padded.npz"
    path.write_bytes(golden.read_bytes())
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1,)})
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:  # 12 MiB of zeros: ~12 kB
        zf.writestr("case0/pad.npy", header.getvalue() + bytes(12 * 2**20))
    assert path.stat().st_size < golden.stat().st_size + 100_000
    assert ig.verify_golden(golden, max_mb=8)["passed"]
    report = ig.verify_golden(path, max_mb=8)
    assert not report["rows"] and report["problems"][0].startswith("refused: the members hold 12.")


def test_export_writes_the_tolerance_it_solved_to(golden):
    arrays, report = arrays_of(golden), ig.verify_golden(golden)
    for c in range(10):
        tol = float(arrays[f"case{c}/tol"])
        assert tol == report["cases"][f"case{c}"]["solve_tol"]
        assert tol == 1e-13 or (c == 2 and 1e-13 < tol < 1e-11)  # near the edge: float64's floor


def test_the_dead_unit_gets_no_input_and_feeds_no_unit(golden):
    arrays = arrays_of(golden)
    dead = [c for c in range(10) if not arrays[f"case{c}/W"][0].any()]
    assert dead == [6]
    A = arrays["case6/A"]
    assert not A[0].any() and not A[:, 0].any() and A[1:, 1:].all()


# ---- the command line ----


def test_integer_options_take_1e3_and_refuse_1_5_by_name(capsys):
    status, s, _, _ = run(capsys, "demo", "--n", "4", "--d", "2e0", "--steps", "3e0")
    assert s["d"] == 2 and s["steps"] <= 3 and status in (0, 1)
    with pytest.raises(SystemExit) as e:
        ig.main(["demo", "--steps", "1.5"])
    assert e.value.code == 2 and "--steps: must be an integer" in capsys.readouterr().err


def test_demo_refuses_a_dt_that_asks_for_too_many_euler_steps(capsys):
    tick = time.perf_counter()
    status, s, _, _ = run(capsys, "demo", "--n", "4", "--dt", "1e-300", "--steps", "2")
    assert status == 2 and "dt = 1e-300 asks for up to" in s["error"] and "Euler steps" in s["error"]
    assert time.perf_counter() - tick < 5


def test_demo_step_counts_agree(capsys):
    _, s, out, _ = run(capsys, "demo", "--n", "3", "--m", "2")
    stopped = int(re.search(r"stopped at GD step (\d+)", out).group(1))
    assert s["steps"] == stopped - 1
    assert f"in {stopped - 1} steps (step {stopped} stopped it)" in out
    assert f"in {stopped - 1} GD steps (step {stopped} stopped it)" in out


def test_a_short_demo_prints_no_estimate_and_bench_prints_its_first(capsys):
    _, s, out, _ = run(capsys, "demo", "--n", "4", "--d", "2")
    assert s["seconds"] < 30 and "estimated time" not in out  # printed only over 30 s
    out = ig.bench(N=1, m=1, d=1, repeats=1, pairs=1)  # Z(0) = 0 at the quarter size: no lr
    first = capsys.readouterr().out.splitlines()
    assert "estimated time about" in first[0] and np.isnan(out["warm_cold_time_ratio"])
    assert "not run: Z(0) = 0" in "\n".join(first)
