"""``muse-fast bench`` and the benchmark report / plots, on tiny synthetic results (no benchmark
is run here: the suite itself runs with ``pytest benchmarks/ --benchmark``)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from muse_fast import bench_cli, cli
from muse_fast.benchmark import Row, load_results, write_results

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"_test_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load("report")
plots = _load("plots")


def _claims_module():
    """benchmarks/test_bench_claims.py (helpers only; its tests need --benchmark)."""
    return _load("test_bench_claims")


def _timed(op, variant, params, ms, mb, mode="forward", **extra):
    return Row(op, variant, params, mode, ms, 0.9 * ms, 1.1 * ms, mb, extra=extra)


def _synthetic_results(root: Path) -> Path:
    """One results folder with every file kind, as the suite writes them."""
    budget = "CPU cap 256 MB (torch allocator accounting)"
    trials = [
        {"batch": 16, "fits": True, "peak_mb": 100.0, "seconds": 1.0},
        {"batch": 32, "fits": True, "peak_mb": 180.0, "seconds": 2.0},
        {"batch": 64, "fits": False, "peak_mb": 340.0, "seconds": 4.0},
        {"batch": 48, "fits": True, "peak_mb": 250.0, "seconds": 3.0},
    ]
    claims = [
        Row(
            "myna max batch",
            "mask 90%",
            {"model": "myna-hybrid vit-s", "mask_ratio": 0.9, "budget": budget},
            "train step",
            peak_mb=250.0,
            extra={
                "claim": "myna_max_batch",
                "max_batch": 48,
                "mb_per_sample": 4.375,
                "cap_mb": 256,
                "limit_hit": False,
                "trials": trials,
                "paper": "4096 per GPU",
            },
        ),
        Row(
            "myna max batch",
            "mask 0%",
            {"model": "myna-hybrid vit-s", "mask_ratio": 0.0, "budget": budget},
            "train step",
            peak_mb=240.0,
            extra={
                "claim": "myna_max_batch",
                "max_batch": 6,
                "mb_per_sample": 30.0,
                "cap_mb": 256,
                "limit_hit": False,
                "trials": [{"batch": 6, "fits": True, "peak_mb": 240.0, "seconds": 5.0}],
                "paper": "not reported",
            },
        ),
        Row(
            "myna max batch ratio",
            "mask 90% / mask 0%",
            {"model": "myna-hybrid vit-s", "budget": budget},
            "train step",
            extra={
                "claim": "myna_batch_ratio",
                "ratio": 8.0,
                "max_batch_90": 48,
                "max_batch_0": 6,
                "paper": "85x",
            },
        ),
    ]
    for size, att, sm in (("small", 62.1e6, 57.8e6), ("large", 187.2e6, 163.6e6)):
        for v, n in (("attention", att), ("summary_mixing", sm)):
            claims.append(
                Row(
                    "parameters",
                    v,
                    {"model": "muselq-branchformer", "size": size},
                    "count",
                    extra={"claim": "parameters", "params": int(n), "encoder_params": int(n / 2)},
                )
            )
        claims.append(
            Row(
                "parameters saving",
                "summary_mixing vs attention",
                {"model": "muselq-branchformer", "size": size},
                "count",
                extra={
                    "claim": "muselq_param_saving",
                    "fewer_pct": 100 * (att - sm) / att,
                    "fewer_pct_encoder": 200 * (att - sm) / att,
                    "paper": "8.5-12.3 % fewer",
                },
            )
        )
    throughput = []
    for recipe in ("myna-hybrid", "bestrq-conformer"):
        for variant, ms in (("fused", 100.0), ("eager", 250.0)):
            throughput.append(
                _timed(
                    "train step",
                    variant,
                    {"recipe": recipe, "size": "tiny", "B": 8},
                    ms,
                    50.0,
                    mode="fwd+bwd+optim",
                    samples_per_s=8 / (ms / 1e3),
                )
            )
    mixers = []
    for T in (250, 500, 1000):
        mixers.append(
            _timed(
                "MuseLQ Branchformer encoder",
                "fused",
                {"T": T, "B": 1, "dim": 256, "depth": 2, "dtype": "fp32"},
                T / 10,
                T / 20,
                mode="fwd+bwd",
            )
        )
        mixers.append(
            _timed(
                "MuseLQ Branchformer encoder",
                "attention",
                {"T": T, "B": 1, "dim": 256, "depth": 2, "dtype": "fp32"},
                T * T / 5000,
                T * T / 20000,
                mode="fwd+bwd",
            )
        )
    ops = []
    for B in (64, 256):
        for variant, ms in (("fused", 1.0), ("reference", 3.0), ("torchaudio", 2.0)):
            ops.append(_timed("mel_spectrogram", variant, {"B": B, "sr": 24000}, ms * B, 10.0 * B))
        ops.append(_timed("mel_spectrogram", "fused", {"B": B, "patch": "16x16"}, 1.0, None))
    write_results(claims, "claims", "cpu", root)
    write_results(throughput, "throughput", "cpu", root)
    write_results(mixers, "mixers", "cpu", root)
    path = write_results(ops, "mel", "cpu", root)
    return path.parent


def test_report_has_a_row_per_claim(tmp_path):
    out = _synthetic_results(tmp_path)
    assert [p.stem for p, _ in load_results(out)] == ["claims", "mel", "mixers", "throughput"]
    text = report.build_summary(out)
    # claims: measured value, paper value, hardware on every row
    assert "| claim | measured | paper | hardware |" in text
    assert "**48** under CPU cap 256 MB" in text
    assert "4.38 MB per extra sample" in text
    assert "**8.0×** (48 vs 6, same model)" in text
    assert "**6.9 % fewer** (62.1 M → 57.8 M)" in text  # (62.1 - 57.8) / 62.1
    assert "**12.6 % fewer**" in text
    assert "fused 80 vs eager 32 samples/s (**2.50×**)" in text
    # mixers at the largest T: attention 200 ms vs SM 100 ms; growth exponents 1 vs 2
    assert "SummaryMixing 100 ms vs MHSA 200 ms (**2.00×**)" in text
    assert "growth exponent in T 1.00 vs 2.00" in text
    # ops: ratios over sizes, one line per baseline
    assert "| mel | mel_spectrogram | forward | reference | 2 | 3.00× | 1.00× |" in text
    assert "| mel | mel_spectrogram | forward | torchaudio | 2 | 2.00× | 1.00× |" in text
    claim_lines = [
        line
        for line in text.split("## Claims")[1].split("##")[0].splitlines()
        if line.startswith("| ") and "---" not in line and "claim |" not in line
    ]
    assert len(claim_lines) == 3 + 2 + 2 + 2
    for line in claim_lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), line
        assert "not measured" not in cells[1]
        assert "Intel" in cells[3] or "AMD" in cells[3] or "thread" in cells[3] or "any" in cells[3]


def test_report_missing_files_say_not_measured(tmp_path):
    (tmp_path / "junk.json").write_text(json.dumps({"not": "results"}))
    text = report.build_summary(tmp_path)
    assert text.count("not measured (no claims.json)") == 5
    assert "not measured (no throughput.json)" in text
    assert "not measured (no mixers.json)" in text
    assert "4096 per GPU" in text and "8.5–12.3 % fewer" in text


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    out = _synthetic_results(tmp_path)
    written = plots.plot_all(out)
    names = sorted(p.name for p in written)
    assert names == [
        "claims_myna_batch.png",
        "claims_parameters.png",
        "mel.png",
        "mixers.png",
        "throughput.png",
    ]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    summary = report.write_summary(out)
    assert "plot: [`mixers.png`](mixers.png)" in summary.read_text()


def test_find_max_batch_doubles_then_bisects():
    find = _claims_module().find_max_batch
    calls = []

    def fits(b):
        calls.append(b)
        return b <= 100, None

    best, trials = find(fits, start=8, limit=1 << 12, rel_tol=1 / 16)
    assert calls[:6] == [8, 16, 32, 64, 128, 96]  # doubling to the first failure, then bisect
    assert 100 - 100 / 16 <= best <= 100
    assert [t[0] for t in trials] == calls
    assert find(lambda b: (b <= 2, None), start=16, limit=64)[0] == 2  # start too big: go down
    assert find(lambda b: (False, None), start=4, limit=64)[0] == 0
    best, trials = find(lambda b: (False, None), start=2, limit=64, minimum=2)
    assert best == 0 and [t[0] for t in trials] == [2]
    best, trials = find(lambda b: (True, None), start=4, limit=48)
    assert best == 48 and [t[0] for t in trials] == [4, 8, 16, 32, 48]


def test_meta_parameter_counts_match_a_real_model():
    claims = _claims_module()
    total, enc = claims.count_parameters("muselq-branchformer", size="tiny")
    from muse_fast import models

    real = models.create("muselq-branchformer", size="tiny")
    assert total == sum(p.numel() for p in real.parameters())
    assert enc == sum(p.numel() for p in real.encoder.parameters())
    import torch.nn as nn

    assert nn.Module.register_parameter.__name__ == "register_parameter"  # patch undone


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "-k", "--device", "--report-only", "--no-plots"):
        assert flag in out


def test_bench_pytest_command_line():
    parser = cli.build_parser()
    args = parser.parse_args(
        ["bench", "--quick", "-k", "claims", "--device", "cpu", "--", "--benchmark-json", "x"]
    )
    argv = bench_cli.pytest_args(args, BENCH)
    assert argv[:2] == [str(BENCH), "--benchmark"]
    for a, b in zip(argv, argv[1:]):
        if a == "-k":
            assert b == "claims"
        if a == "--benchmark-device":
            assert b == "cpu"
    assert "--benchmark-quick" in argv and argv[-2:] == ["--benchmark-json", "x"]


def test_bench_report_only(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    root = tmp_path / "results"
    out = _synthetic_results(root)
    code = cli.main(["bench", "--report-only", "--device", "cpu", "--results", str(root)])
    assert code == 0
    assert (out / "SUMMARY.md").is_file() and (out / "throughput.png").is_file()
    printed = capsys.readouterr().out
    assert f"summary: {out / 'SUMMARY.md'}" in printed
    assert cli.main(["bench", "--path", str(tmp_path)]) == 2  # no suite there


def test_progress_plugin_counts_items(tmp_path):
    (tmp_path / "test_tiny.py").write_text(
        "import pytest\n"
        "def test_a(): pass\n"
        "def test_b(): pytest.skip('x')\n"
        "@pytest.mark.parametrize('i', range(3))\n"
        "def test_c(i): pass\n"
    )
    import io

    buf = io.StringIO()
    plugin = bench_cli.ProgressPlugin(file=buf, disable=False)
    code = pytest.main(
        [
            str(tmp_path),
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
        ],
        plugins=[plugin],
    )
    assert code == 0
    assert plugin.total == 5 and plugin.finished == 5
    assert "5/5" in buf.getvalue()
    sys.modules.pop("test_tiny", None)


def test_memory_limit_is_85_percent_of_the_free_memory_capped_on_cpu():
    from muse_fast.benchmark import CPU_BASELINE_CAP, memory_limit

    with open("/proc/meminfo") as f:
        avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    want = min(0.85 * avail, CPU_BASELINE_CAP)
    assert 0 < memory_limit("cpu") <= CPU_BASELINE_CAP
    assert abs(memory_limit("cpu") - want) < 2**28  # MemAvailable moves between the two reads


def test_skip_unless_fits_skips_only_above_the_limit():
    from muse_fast.benchmark import memory_limit, skip_unless_fits

    skip_unless_fits(0.5 * memory_limit("cpu"), "half the limit", "cpu")
    with pytest.raises(pytest.skip.Exception, match="twice the limit: needs"):
        skip_unless_fits(2 * memory_limit("cpu"), "twice the limit", "cpu")
