"""docs/BENCHMARKS.md and its plot from the results of :mod:`benchmarks.run` (issue 13's targets)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from benchmarks.flops import MATMUL_OPS

FP32 = "ORT FP32"
# Served throughputs closer than this are one speed when the CPU default is chosen: the same configuration
# measured twice in one run differs by a few percent here (OpenVINO INT8 at concurrency 16: 110.2 and 112.8/s).
SPEED_TIE = 0.05
# Variants whose sweep speed is at least (1 - this) x make serve's current default's are compared with it in
# alternating rounds before the default is chosen (benchmarks.run).
CLOSE_TO_INCUMBENT = 0.15
MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"


def served_cpu_default(makefile: Path | None = None, capabilities: list[str] | None = None) -> str | None:
    """The variant `make serve` adds beside FP32 (Makefile's CPU_DEFAULT_PRECISION), as a report label; ``auto``
    as it resolves on a CPU with these OpenVINO capabilities (None: this machine's)."""
    from bertqa.export.openvino import resolve_precision

    makefile = makefile or MAKEFILE
    match = re.search(r"^CPU_DEFAULT_PRECISION \?= *(\S*)", makefile.read_text(), re.M) if makefile.is_file() else None
    return f"OpenVINO {resolve_precision(match[1], capabilities).upper()}" if match and match[1] else None


def documented_cpu_capabilities(markdown: str) -> list[str] | None:
    """OpenVINO's CPU capabilities on the machine a written report measured (its Machine table), None if absent."""
    match = re.search(r"^\| openvino_cpu_capabilities \| (.*) \|$", markdown, re.M)
    return [c.strip() for c in match[1].split(",") if c.strip()] if match else None


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def served_rows(results: dict, key: str, protocol: str = "HTTP") -> list[dict]:
    return [m for m in results["measurements"] if m["system"].startswith("Triton ") and m["system"].endswith(
        f"({key}) {protocol}") and m["concurrency"]]


def _at(results: dict, key: str, concurrency: int) -> dict | None:
    return next((m for m in served_rows(results, key) if m["concurrency"] == concurrency), None)


def _best(results: dict, key: str) -> dict | None:
    rows = served_rows(results, key)
    return max(rows, key=lambda m: m["pairs_per_s"]) if rows else None


def _f1_ratio(results: dict, key: str) -> float:
    return results["inprocess"][key]["f1"] / results["inprocess"][FP32]["f1"]


def _inprocess_speed(row: dict) -> float:
    """In-process questions/s on the questions the served rows answer (older results: on the whole sample)."""
    return row.get("served_pairs_questions_per_s", row["questions_per_s"])


def _eligible(results: dict) -> list[str]:
    """Variants that keep at least 99 % of FP32's F1 on the sample (issue 13's accuracy rule)."""
    return [k for k in results["inprocess"] if _f1_ratio(results, k) >= 0.99]


def _inprocess_ceiling(results: dict) -> tuple[str, float] | None:
    """(variant, in-process questions/s / HF pipeline's) of the fastest eligible variant in-process: the most a
    server of this checkpoint could reach. None without an HF measurement or an eligible variant."""
    hf, inproc, eligible = results.get("hf"), results["inprocess"], _eligible(results)
    if not hf or not eligible:
        return None
    key = max(eligible, key=lambda k: _inprocess_speed(inproc[k]))
    return key, _inprocess_speed(inproc[key]) / hf["questions_per_s"]


def targets(results: dict) -> list[dict]:
    """Issue 13's targets: what is required, the ratio measured in this run, and what it is made of."""
    out = []

    def add(name, required, measured, basis, low=None, high=None):
        met = None if measured is None or low is None else (low <= measured <= (high if high is not None else math.inf))
        out.append({"target": name, "required": required, "measured": measured, "met": met, "basis": basis})

    inproc, hf = results["inprocess"], results.get("hf")
    eligible = _eligible(results)
    paired_hf = results["checks"].get("served_vs_hf")  # when measured, the alternating rounds are the target
    if hf:
        for label, pick in (("concurrency 1", lambda k: _at(results, k, 1)), ("best concurrency", lambda k: _best(results, k))):
            rows = [(k, pick(k)) for k in eligible if pick(k)]
            if rows:
                key, m = max(rows, key=lambda r: r[1]["pairs_per_s"])
                add(f"best served variant / HF pipeline, {label}", "compared" if paired_hf else ">= 8 (F1 >= 99 % of FP32)",
                    m["pairs_per_s"] / hf["questions_per_s"],
                    f"{key} at concurrency {m['concurrency']}: {m['pairs_per_s']:.2f} vs {hf['questions_per_s']:.2f} "
                    f"questions/s; F1 {inproc[key]['f1']:.2f} = {_f1_ratio(results, key):.1%} of FP32"
                    + ("; the HF pipeline measured once, before serving" if paired_hf else ""),
                    low=None if paired_hf else 8.0)
        if ceiling := _inprocess_ceiling(results):
            key, ratio = ceiling
            add("best in-process variant / HF pipeline (the most a server of this checkpoint could reach)", "compared",
                ratio, f"{key} in-process, one question at a time, no serving at all: {_inprocess_speed(inproc[key]):.2f} vs "
                f"{hf['questions_per_s']:.2f} questions/s")
    if paired_hf:
        key = paired_hf["variant"]
        for concurrency, rounds in paired_hf["concurrencies"].items():
            add(f"served CPU default ({key}) / HF pipeline, concurrency {concurrency}, alternating rounds",
                ">= 8 (F1 >= 99 % of FP32)", rounds["median_ratio"],
                f"median of {len(rounds['ratios'])} rounds on the same {paired_hf['pairs']} questions (served over "
                f"{paired_hf['protocol'].upper()}, the HF pipeline one question at a time): round ratios "
                f"{_numbers(rounds['ratios'], '.2f')}; medians {rounds['median_numerator']:.2f} vs "
                f"{rounds['median_denominator']:.2f} questions/s; F1 {inproc[key]['f1']:.2f} = "
                f"{_f1_ratio(results, key):.1%} of FP32", low=8.0)
        if bound := paired_hf.get("forward_passes_alone"):
            add(f"{key}'s forward passes alone / HF pipeline (the bound on any server of this checkpoint)", "compared",
                bound["median_ratio"],
                f"every window of the {paired_hf['pairs']} questions padded to its own bucket and batched with all "
                "others of its length, run with no tokenization, decoding or serving; median of "
                f"{len(bound['ratios'])} alternating rounds: round ratios {_numbers(bound['ratios'], '.2f')}; medians "
                f"{bound['median_numerator']:.2f} vs {bound['median_denominator']:.2f} questions/s")
    bf16, fp32 = _best(results, "OpenVINO BF16"), _best(results, "OpenVINO FP32")
    if bf16 and fp32:
        ok = _f1_ratio(results, "OpenVINO BF16") >= 0.99
        add("served BF16 / served FP32 (OpenVINO, best concurrency each)", ">= 1.7 (F1 >= 99 % of FP32)",
            bf16["pairs_per_s"] / fp32["pairs_per_s"],
            f"{bf16['pairs_per_s']:.2f} vs {fp32['pairs_per_s']:.2f} questions/s; BF16 F1 {inproc['OpenVINO BF16']['f1']:.2f} "
            f"= {_f1_ratio(results, 'OpenVINO BF16'):.1%} of FP32" + (
                "; this CPU has no native BF16, so the BF16 variant computes in f32 (OpenVINO would emulate BF16)"
                if "BF16" not in results["machine"].get("openvino_cpu_capabilities", ["BF16"]) else ""),
            low=1.7 if ok else math.inf)
    default = results.get("default")
    paired = results["checks"].get("served_vs_in_process")
    if paired:
        add(f"served / in-process, same engine ({paired['variant']})", ">= 0.95", paired["median_ratio"],
            f"median of {len(paired['ratios'])} alternating rounds on the same {paired['pairs']} questions (served over "
            f"{paired['protocol'].upper()} at concurrency {paired['concurrency']}, in-process one question at a time): "
            f"round ratios {_numbers(paired['ratios'], '.2f')}; medians "
            f"{paired['median_numerator']:.2f} served vs {paired['median_denominator']:.2f} in-process questions/s"
            + (f"; CPU per question {_cpu_total(paired['cpu']):.1f} ms served (all processes) vs "
               f"{paired['cpu']['in_process_ms_per_question']:.1f} ms in-process (see below)" if "cpu" in paired else ""),
            low=0.95)
    elif default:  # results written before the paired rounds: the served sweep against the in-process pass
        best = _best(results, default)
        add(f"served / in-process, same engine ({default})", ">= 0.95", best["pairs_per_s"] / _inprocess_speed(inproc[default]),
            f"{best['pairs_per_s']:.2f} served (concurrency {best['concurrency']}) vs {_inprocess_speed(inproc[default]):.2f} "
            f"in-process questions/s, one question at a time, same questions", low=0.95)
    base = results["checks"].get("bert_base")
    if base:
        peak = results["gemm"]["peak_gflops"]
        engines = {k: e["sequences_per_s"] for k, e in base.get("engines", {}).items()} or \
            {"ONNX Runtime": base["sequences_per_s"]}  # results written before OpenVINO was measured too
        best = max(engines, key=engines.get)
        shape = {"bert-base": "BERT-base"}.get(base.get("shape", "bert-base"), base.get("shape"))
        rounds = base.get("paired")  # when measured, the alternating rounds are the target; the one pass is context
        add(f"FP32 model FLOP utilisation ({shape} in-process, best FP32 engine: {best}) / GEMM peak",
            "compared" if rounds else ">= 0.9",
            engines[best] * base["gflop_per_sequence"] / peak,
            "; ".join(f"{engine} {speed:.2f} seq/s = {speed * base['gflop_per_sequence'] / peak:.2f}"
                      for engine, speed in engines.items())
            + f" ({base['gflop_per_sequence']:.1f} GFLOP per 384-token sequence; peak {peak:.1f} GFLOP/s"
            + (f", {top['engine']} MatMul {top['m']}x{top['k']}x{top['n']})" if (top := results["gemm"]["best"]).get("engine")
               else ")") + (", the peak measured at the start of the run" if rounds else ""),
            low=None if rounds else 0.9)
        if rounds:
            gemm = rounds["gemm"]
            add(f"FP32 model FLOP utilisation ({shape}, {rounds['engine']}) / GEMM peak, alternating rounds", ">= 0.9",
                rounds["median_ratio"],
                f"median of {len(rounds['ratios'])} rounds, each the model's FLOP/s against the GEMM peak re-measured "
                f"({gemm['engine']} MatMul {gemm['m']}x{gemm['k']}x{gemm['n']}): round ratios "
                f"{_numbers(rounds['ratios'], '.2f')}; medians {rounds['median_numerator']:.1f} vs "
                f"{rounds['median_denominator']:.1f} GFLOP/s", low=0.9)
        if base.get("matmul_seconds"):
            total = sum(base["op_seconds"].values())
            add(f"{shape} FP32: FLOP/s while in matrix-product ops / GEMM peak (ORT profiler)", "compared",
                base["gflop_per_sequence"] / base["matmul_seconds"] / results["gemm"]["peak_gflops"],
                f"matrix products {base['matmul_seconds'] * 1000:.0f} of {total * 1000:.0f} ms per sequence "
                f"({base['matmul_seconds'] / total:.0%}); the rest: " + ", ".join(
                    f"{op} {s / total:.0%}" for op, s in list(base["op_seconds"].items())[:6] if op not in MATMUL_OPS))
    scenario = results["checks"].get("server_scenario")
    if scenario and scenario.get("mg1_rate"):
        add(f"Server scenario: highest Poisson rate with p99 <= 130 ms / M/G/1 ({scenario['variant']})", "compared",
            scenario["best_rate"] / scenario["mg1_rate"],
            f"{scenario['best_rate']:.1f}/s met (of {_numbers(p['rate'] for p in scenario['points'])} tried) vs "
            f"M/G/1 {scenario['mg1_rate']:.1f}/s (measured service times, mean {scenario['service_ms']:.0f} ms) and "
            f"M/D/1 {scenario['md1_rate']:.1f}/s (every request {scenario['service_ms']:.0f} ms){_scenario_gaps(scenario)}")
    elif scenario and scenario["md1_rate"]:
        add(f"Server scenario: highest Poisson rate with p99 <= 130 ms / M/D/1 ({scenario['variant']})", "compared",
            scenario["best_rate"] / scenario["md1_rate"],
            f"{scenario['best_rate']:.1f}/s met (of {_numbers(p['rate'] for p in scenario['points'])} tried) vs "
            f"M/D/1 {scenario['md1_rate']:.1f}/s at a {scenario['service_ms']:.0f} ms service time{_scenario_gaps(scenario)}")
    for key in inproc:
        single = _at(results, key, 1)
        for c in (4, 16):
            m = _at(results, key, c)
            if single and m:
                add(f"no collapse: concurrency {c} / concurrency 1 ({key})", ">= 0.95", m["pairs_per_s"] / single["pairs_per_s"],
                    f"{m['pairs_per_s']:.2f} vs {single['pairs_per_s']:.2f} questions/s", low=0.95)
    for row in results["checks"].get("perf_analyzer", {}).get("rows", []):
        rounds = row.get("rounds")
        how = (f"median of {len(rounds['ratios'])} alternating rounds (round ratios {_numbers(rounds['ratios'], '.2f')}); medians "
               if rounds else "")
        add(f"bertqa bench / perf_analyzer, concurrency {row['concurrency']} ({results['checks']['perf_analyzer']['variant']})",
            "0.9-1.1", _perf_analyzer_ratio(row),
            f"{how}{row['bench_throughput']:.2f} vs {row['throughput']:.2f} questions/s; p50 {row['bench_p50_ms']:.0f} vs "
            f"{row['p50_ms']:.0f} ms", low=0.9, high=1.1)
    full = results.get("full_dev")
    chosen = full and next((row for row in full["rows"] if row["label"] == default), None)
    if chosen:
        base = full["rows"][0]
        add(f"CPU default ({chosen['label']}): full-dev F1 / FP32 F1", ">= 0.99", chosen["f1"] / base["f1"],
            f"F1 {chosen['f1']:.2f} vs {base['f1']:.2f} on all {chosen['questions']} SQuAD v1.1 dev questions, in-process",
            low=0.99)
    if default:
        add(f"CPU default ({default}): sample F1 / FP32 F1", ">= 0.99", _f1_ratio(results, default),
            f"F1 {inproc[default]['f1']:.2f} vs {inproc[FP32]['f1']:.2f} on {inproc[default]['questions']} questions", low=0.99)
    return out


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["inprocess"])
    concurrencies = sorted({m["concurrency"] for k in keys for m in served_rows(results, k)})
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / (len(concurrencies) + 1)
    for i, c in enumerate(concurrencies):
        values = [(_at(results, k, c) or {}).get("pairs_per_s", 0.0) for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=f"served, concurrency {c}")
    ax.bar([x + len(concurrencies) * width for x in range(len(keys))],
           [results["inprocess"][k]["questions_per_s"] for k in keys], width, label="in-process", color="0.6")
    if results.get("hf"):
        ax.axhline(results["hf"]["questions_per_s"], color="black", linestyle="--", label="HF pipeline (PyTorch FP32)")
    ax.set_xticks([x + width * len(concurrencies) / 2 for x in range(len(keys))])
    ax.set_xticklabels([f"{k}\nF1 {results['inprocess'][k]['f1']:.1f}" for k in keys])
    ax.set_ylabel("SQuAD dev questions/s")
    ax.set_title("BERT QA on CPU: each variant served by Triton and in-process (same checkpoint, same questions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(results: dict, png_name: str) -> str:
    inproc, checks = results["inprocess"], results["checks"]
    lines = [
        "# Benchmarks: BERT QA on CPU, served by Triton, on real SQuAD",
        "",
        f"Generated by `{results.get('command', 'make bench')}` (`benchmarks/run.py`, profile `{results['profile']}`) in "
        f"{results['elapsed_s'] / 60:.1f} minutes, everything in one run on one machine. Do not edit by hand; rerun `make bench`.",
        "",
        f"Checkpoint: `{Path(results['checkpoint']).name}`; questions: {results['data']['source']}. "
        "ONNX Runtime FP32/INT8 are exported from it by `bertqa export`; the OpenVINO variants are converted from "
        "that FP32 ONNX by `python -m bertqa.export.openvino` (the converter `bertqa export --format openvino` "
        "runs); every variant answers the same questions.",
    ]
    if results.get("machine_note"):
        lines += ["", f"**Machine:** {results['machine_note']}"]
    m = results["machine"]
    lines += ["", "## Machine", "", "| | |", "|---|---|"] + [
        f"| {k} | {', '.join(v) if isinstance(v, list) else v} |" for k, v in m.items()]
    lines += ["", "The load generator runs on the same cores as the server, as every in-process baseline does"
              + ("; the server is `bertqa serve` in a process of its own, as users run it." if results.get("served_by") else
                 ", and in the same Python process as the server's HTTP front and supervisor (`bertqa serve` gives "
                 "them a process of their own)."), "",
              "## Targets", ""]
    lines += _table(["target", "required", "measured", "met", "basis"], [
        [t["target"], t["required"], _fmt(t["measured"]), {True: "yes", False: "**no**", None: "–"}[t["met"]], t["basis"]]
        for t in targets(results)])
    lines += ["", f"![throughput per variant]({png_name})", "", "## Variants: accuracy and speed", ""]
    default = results.get("default")
    full = results.get("full_dev")
    if default:
        basis = "on the full SQuAD v1.1 dev set" if full else "on this sample"
        served = served_cpu_default(capabilities=results["machine"].get("openvino_cpu_capabilities"))
        serves = ("`make serve` serves it on this CPU" if served == default else
                  f"**`make serve` serves {served or 'FP32 only'} (Makefile `CPU_DEFAULT_PRECISION`): it differs**")
        lines += [f"**CPU default by measurement: {default}** — the fastest served variant whose F1 {basis} is at "
                  f"least 99 % of FP32's (issue 13's rule; served throughputs within {SPEED_TIE:.0%} count as one speed, and "
                  f"then `make serve`'s current default, else the more accurate on the sample, wins); {serves}."]
        against = results["checks"].get("against_incumbent")
        if against and against["variants"]:
            lines += ["", f"Served speed against `make serve`'s current default ({against['incumbent']}), for the variants "
                      f"whose sweep came within {CLOSE_TO_INCUMBENT:.0%}: alternating rounds over {against['protocol'].upper()} at concurrency "
                      f"{against['concurrency']} (between runs a sweep figure moves by more than the {SPEED_TIE:.0%} tie), A / "
                      f"{against['incumbent']}:", ""]
            lines += _table(["variant", "sweep ratio", "round ratios", "median"], [
                [key, f"{row['sweep_ratio']:.3f}", _numbers(row["ratios"], ".3f"), f"**{row['median_ratio']:.3f}**"]
                for key, row in against["variants"].items()])
    if full:
        lines += ["", "Full-dev accuracy (in-process, one question at a time, through the served ensemble's tokenizer, "
                  f"windowing and decoding; {full.get('note', 'same checkpoint')}):", ""]
        lines += _table(["variant", "questions", "EM", "F1", "F1 / FP32"],
                        [[row["label"], str(row["questions"]), _fmt(row["exact_match"]), _fmt(row["f1"]),
                          f"{row['f1'] / full['rows'][0]['f1']:.2%}"] for row in full["rows"]])
        lines += ["", "On the sample of the targets table:", ""]
    rows = []
    for key, row in inproc.items():
        single, best = _at(results, key, 1), _best(results, key)
        export = results["exports"].get(key, {})
        rows.append([key, _fmt(row["exact_match"]), _fmt(row["f1"]), f"{row['f1'] / inproc[FP32]['f1']:.1%}",
                     f"{row['identical_to_fp32']}/{row['questions']}", _fmt(row["questions_per_s"], 1),
                     _fmt(single and single["pairs_per_s"], 1),
                     f"{_fmt(best and best['pairs_per_s'], 1)} (c{best['concurrency']})" if best else "–",
                     _fmt(export.get("seconds"), 0)])
    lines += _table(["variant", "EM", "F1", "F1 / FP32", "answers = FP32", "in-process q/s", "served c1 q/s",
                     "served best q/s", "export s"], rows)
    hf = results.get("hf")
    if hf:
        lines += ["", f"Hugging Face `pipeline(\"question-answering\")` on PyTorch FP32 (same checkpoint, {hf['detail']}): "
                  f"{hf['questions_per_s']:.2f} questions/s on the first {hf['questions']} questions, the ones the served "
                  f"rows answer (F1 {hf['f1']:.2f})."]
    lines += ["", "In-process: tokenize + model + span decoding in this process, one question at a time. Served: "
              "`bertqa bench` over HTTP, closed loop, warm-up then stable windows.", "", "### Served throughput and latency", ""]
    srows = [[mm["system"], mm["detail"], _fmt(mm["pairs_per_s"]), _fmt(mm["latency_ms"].get("p50"), 0),
              _fmt(mm["latency_ms"].get("p99"), 0), {True: "yes", False: "no", None: "–"}[mm["stable"]]]
             for mm in results["measurements"]]
    lines += _table(["system", "load", "questions/s", "p50 ms", "p99 ms", "stable"], srows)
    lines += _cpu_split(checks) + _perf_analyzer(checks) + _scenario(checks) + _buckets(checks) + _threads(results) + _retired(results)
    return "\n".join(lines) + "\n"


def _perf_analyzer(checks: dict) -> list[str]:
    pa = checks.get("perf_analyzer")
    if not pa:
        return ["", "## perf_analyzer beside bench", "", f"Not measured: {checks.get('perf_analyzer_error', 'skipped')}."]
    lines = ["", "## perf_analyzer beside bench", "",
             f"Same server, same {pa['variant']} ensemble, same SQuAD pairs (`bertqa bench --perf-analyzer-data FILE` "
             "writes perf_analyzer's `--input-data`); perf_analyzer from the tritonclient 2.51.0 wheel:", "",
             f"    {pa['command']}", ""]
    if pa.get("rounds"):
        lines += [f"Each concurrency in {pa['rounds']} rounds, bench and perf_analyzer alternating which runs first; "
                  "the figures are the rounds' medians and the ratio the median of the rounds' ratios "
                  "(`benchmarks/paired.py`): this machine's speed drifts between measurements minutes apart.", ""]
    return lines + _table(["concurrency", "perf_analyzer q/s", "perf_analyzer stable (25 %)", "bench q/s",
                           "bench / perf_analyzer", "round ratios", "p50 ms (pa / bench)", "p99 ms (pa / bench)"],
                          [[str(r["concurrency"]), _fmt(r["throughput"]), "yes" if r.get("stable", True) else "no",
                            _fmt(r["bench_throughput"]), _fmt(_perf_analyzer_ratio(r)),
                            _numbers(r["rounds"]["ratios"], ".2f") if r.get("rounds") else "one pass",
                            f"{r['p50_ms']:.0f} / {r['bench_p50_ms']:.0f}",
                            f"{r['p99_ms']:.0f} / {r['bench_p99_ms']:.0f}"] for r in pa["rows"]])


def _scenario_gaps(scenario: dict) -> str:
    """When a lower rate missed the bound that a higher one met, say so, and up to which rate every one met:
    a p99 over about a thousand queries moves with this VM's slow spells more than with the rate."""
    points = sorted(scenario["points"], key=lambda p: p["rate"])
    missed = [p["rate"] for p in points if not p["met"] and p["rate"] < scenario["best_rate"]]
    if not missed:
        return ""
    below = [p["rate"] for p in points if p["rate"] < missed[0]]
    return (f"; not monotone: {_numbers(missed)}/s missed the bound, so every tried rate met "
            + (f"only up to {below[-1]:.1f}/s" if below else "at none"))


def _numbers(values, spec: str = ".1f") -> str:
    return ", ".join(format(v, spec) for v in values)


def _perf_analyzer_ratio(row: dict) -> float:
    """The median of the rounds' ratios; results from before the rounds have one pass of each."""
    return row.get("ratio", row["bench_throughput"] / row["throughput"])


def _scenario(checks: dict) -> list[str]:
    s = checks.get("server_scenario")
    if not s:
        return []
    if not s.get("mg1_rate"):
        lines = ["", "## Server scenario (MLPerf-style Poisson arrivals, p99 <= 130 ms)", "",
                 f"{s['variant']}, HTTP. Service time one request at a time: {s['service_ms']:.1f} ms; M/D/1 bound "
                 f"{s['md1_rate']:.1f} requests/s.", ""]
        basis = "of the M/D/1 rate"
    else:
        lines = ["", "## Server scenario (MLPerf-style Poisson arrivals, p99 <= 130 ms)", "",
                 f"{s['variant']}, HTTP. Served one request at a time, a question takes {s['service_ms']:.1f} ms on "
                 f"average, but real SQuAD questions differ (a long context needs several windows): shaped like the "
                 f"in-process times of the same questions, p50 {s['service_p50_ms']:.1f} ms and p99 "
                 f"{s['service_p99_ms']:.1f} ms. A single-server queue fed Poisson arrivals (`benchmarks/queueing.py`, "
                 f"Lindley's recursion) keeps p99 time-in-system within 130 ms up to {s['mg1_rate']:.1f} requests/s with "
                 f"those service times (M/G/1), and up to {s['md1_rate']:.1f}/s if every request took the mean (M/D/1). "
                 "Rates around the M/G/1 bound were offered; batching across requests lets the server beat it when "
                 f"merged requests cost less than one each. Health canaries every {s.get('canary_interval_s', 2):g} s "
                 "(idle ensembles only, one at a time, spread over the interval).", ""]
        basis = "of the M/G/1 rate"
    return lines + _table(["offered /s", basis, "achieved /s", "p50 ms", "p99 ms", "p99 <= 130 ms"],
                          [[_fmt(p["rate"], 1), f"{p['fraction']:.0%}", _fmt(p["achieved"], 1), _fmt(p["p50_ms"], 0),
                            _fmt(p["p99_ms"], 0), "yes" if p["met"] else "no"] for p in s["points"]])


def _cpu_total(cpu: dict) -> float:
    return sum(cpu["served"]["ms_per_question"].values())


def _cpu_split(checks: dict) -> list[str]:
    paired = checks.get("served_vs_in_process")
    if not paired or "cpu" not in paired:
        return []
    cpu, served = paired["cpu"], paired["cpu"]["served"]
    total, in_process = _cpu_total(cpu), cpu["in_process_ms_per_question"]
    # Roles under 1 % (idle variants' stubs, the kernel, ...) are one row: the table is about the busy ones.
    shown = {role: ms for role, ms in served["ms_per_question"].items() if ms >= 0.01 * total}
    rest = total - sum(shown.values())
    rows = [[role, f"{ms:.2f}", f"{ms / total:.0%}"] for role, ms in shown.items()]
    rows.append(["the rest (idle variants' stubs, the kernel, other processes)", f"{rest:.2f}", f"{rest / total:.0%}"])
    rows.append(["**all, served**", f"**{total:.2f}**", "100%"])
    busy = served["machine_busy_cores"] / served["cores"]
    rows.append(["in-process: tokenizer, model, decoding in one process", f"{in_process:.2f}", "–"])
    return ["", "## Where a served question's CPU goes", "",
            f"{paired['variant']} at concurrency {paired['concurrency']} over {paired['protocol'].upper()}, during the "
            f"served half of the served / in-process rounds (median of {served['rounds']} rounds; psutil CPU times of "
            f"every process, `benchmarks/cpu_split.py`). The whole machine was busy {served['machine_busy_cores']:.2f} "
            f"of {served['cores']} cores" + (
                ", so served throughput is a CPU budget: what serving adds to a question's CPU (tritonserver, the "
                "Python stubs' IPC, the HTTP front, the load generator on the same cores) is what served / "
                "in-process loses." if busy >= 0.9 else
                ": not CPU-bound, so served / in-process is lost to waiting (queueing, IPC round trips), not to CPU.")
            + " In-process CPU counts every thread of the process, the model's spinning ones included.", ""] + _table(["process", "CPU ms per question", "share"], rows) + [
        "", f"CPU per question, in-process / served: **{in_process / total:.2f}** (served / in-process throughput: "
        f"{paired['median_ratio']:.2f})."]


def _buckets(checks: dict) -> list[str]:
    b = checks.get("length_buckets")
    if not b:
        return []
    f = b["flops"]
    served = b["served"]
    return ["", "## Sequence-length buckets on the real SQuAD dev length mix", "",
            f"{b['pairs']} SQuAD dev pairs, OpenVINO INT8 served at concurrency {b['concurrency']}: qa_preprocess "
            f"`seq_len_buckets` \"{b['buckets']}\" vs every window padded to 384.", ""] + _table(
        ["qa_preprocess", "answers/s", "model FLOPs for the mix (matmuls)"],
        [["buckets " + b["buckets"] + " (committed)", _fmt(served["buckets"]), f"{f['buckets'] / 1e12:.2f} TFLOP"],
         ["padded to 384", _fmt(served["padded to 384"]), f"{f['padded to 384'] / 1e12:.2f} TFLOP"],
         ["no padding at all (bound)", "–", f"{f['exact'] / 1e12:.2f} TFLOP"]]) + [
        "", f"Served, buckets / padded: **{served['buckets'] / served['padded to 384']:.2f}x**. FLOPs, padded / buckets: "
        f"{f['padded to 384'] / f['buckets']:.2f}x; padded / no padding: {f['padded to 384'] / f['exact']:.2f}x — the "
        "most any bucketing could gain on this mix; the committed buckets reach "
        f"{(f['padded to 384'] / f['buckets'] - 1) / max(f['padded to 384'] / f['exact'] - 1, 1e-9):.0%} of that FLOP saving."]


def _threads(results: dict) -> list[str]:
    lines = ["", "## Thread budgets", "",
             "The BERT model's generated config (`bertqa export`), as served here:", ""]
    for key, export in results["exports"].items():
        config = export["config"]
        instances = re.findall(r"instance_group\s*\{[^}]*?count:\s*(\d+)", config)
        # Top-level parameters only (the openvino ones); the per-input reshape blocks nest theirs deeper.
        params = re.findall(r'^parameters\s*\{\s*key:\s*"([^"]+)"\s*value\s*\{\s*string_value:\s*"([^"]*)"', config, re.M)
        settings = ", ".join(f"{k}={v}" for k, v in params if k not in ("RESHAPE_IO_LAYERS",)) or "runtime defaults"
        lines.append(f"- {key}: {instances[0] if instances else 1} instance(s); {settings}")
    return lines


def _retired(results: dict) -> list[str]:
    from benchmarks.queueing import md1_percentile

    ratio = md1_percentile(0.7, 1.0, 99) / md1_percentile(0.7, 1.0, 50)  # scale-free: service time 1
    fp32, hf = _best(results, "OpenVINO FP32") or _best(results, FP32), results.get("hf")
    measured = (f" Here the best served FP32 variant reaches {fp32['pairs_per_s'] / hf['questions_per_s']:.2f}x the "
                "pipeline." if fp32 and hf else "")
    return ["", "## Retired targets", "",
            "- **Served FP32 / HF pipeline >= 1.8x**: FP32 is at the CPU's physical limit. The pipeline's PyTorch "
            "FP32 already runs BERT's matmuls near the dense FP32 GEMM peak measured above (the FLOP-utilisation row), "
            "so no FP32 serving stack can be 1.8x faster on the same checkpoint; the speed-up has to come from reduced "
            "precision (BF16, INT8), which the `>= 8x` target now measures with the bert-99 accuracy rule attached."
            + measured,
            f"- **p99 / p50 <= 1.5 at 70 % load (Server scenario)**: with Poisson arrivals even an ideal server with a "
            f"constant service time (M/D/1) has p99 / p50 = {ratio:.1f} at 70 % utilisation (`benchmarks/queueing.py`): "
            "the target measured the arrival process, not the server. It is replaced by MLPerf's own form: the highest "
            "Poisson rate whose p99 stays within 130 ms, next to what M/G/1 and M/D/1 queues with the measured service "
            "times allow."] + _eightfold(results)


def _eightfold(results: dict) -> list[str]:
    """Why the >= 8x target is out of reach on this machine, from this run's own figures."""
    found = _inprocess_ceiling(results)
    if not found or found[1] >= 8:
        return []
    (key, ceiling), hf, inproc = found, results["hf"], results["inprocess"]
    return ["", "### Why >= 8x over the HF pipeline is out of reach here", "",
            f"The target assumed the pipeline answers 6.8-7.8 questions/s on this checkpoint; measured here it answers "
            f"{hf['questions_per_s']:.1f}. With one question per call the pipeline pads nothing (each sequence is as long "
            "as its question and context), and PyTorch runs a 6-layer, 384-wide model efficiently. The fastest variant "
            f"that keeps 99 % of FP32's F1 ({key}) answers {_inprocess_speed(inproc[key]):.1f} questions/s in-process "
            f"with no serving at all: {ceiling:.2f}x the pipeline. No server of this checkpoint on this machine can go "
            "beyond that by more than what batching across requests adds" + _forward_bound(results) + ", so 8x needs a "
            "cheaper model (fewer layers, pruning) at the same accuracy, or more cores; the served / in-process row says "
            "how much of the ceiling the server keeps."]


def _forward_bound(results: dict) -> str:
    against_hf = results["checks"].get("served_vs_hf") or {}
    bound = against_hf.get("forward_passes_alone")
    if not bound:
        return ""
    return (f": the served default's ({against_hf['variant']}) forward passes alone, every window batched with all others of its length and nothing else run "
            f"(no tokenization, decoding or serving), answer {bound['median_numerator']:.1f} questions/s, "
            f"{bound['median_ratio']:.2f}x the pipeline in alternating rounds")


def write_report(results: dict, output: Path) -> list[Path]:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    png = plot(results, output.with_suffix(".png"))
    output.write_text(markdown(results, png.name), encoding="utf-8")
    return [output, png]


def main(argv=None) -> int:
    """Rewrites the report from saved results (`benchmarks.run --json`), adding full-dev accuracy rows."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="the JSON `python -m benchmarks.run --json` wrote")
    parser.add_argument("--full-dev", type=Path, default=None,
                        help="`python -m benchmarks.full_dev` output; rows in order, FP32 first, the default last")
    parser.add_argument("--labels", default=None, help="comma-separated labels of the full-dev rows (default: model names)")
    parser.add_argument("--note", default="same checkpoint", help="where the full-dev figures come from")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    if args.full_dev:
        rows = list(json.loads(args.full_dev.read_text()).values())
        labels = args.labels.split(",") if args.labels else [r["model"] for r in rows]
        results["full_dev"] = {"note": args.note, "rows": [{**r, "label": label} for r, label in zip(rows, labels)]}
    for path in write_report(results, args.output):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
