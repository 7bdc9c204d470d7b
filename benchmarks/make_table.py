#!/usr/bin/env python3
"""pytest-benchmark JSON -> the Markdown tables of the README.

    python benchmarks/make_table.py benchmarks/results/*.json [-o table.md]

One table per (device, op), and one per device for end-to-end generation
(bench_generate.py's test_generate records on the shipped pair: tokens/s, ours over HF
assisted generation at the same K and over both verifier-alone loops at the same batch),
and one per batch size for its test_generate_paired records (interleaved rounds: each
provider's tokens/s and the ratios paired within rounds, median and IQR).
A kernel row is one (mode or kind, shape, dtype); its cells are the median µs of each
provider, the bytes the op must move, the bandwidth floor, and, for "ours" (the first of
triton (graph), triton, cpp that was measured):
  ours/floor     ours ÷ floor (1.0 would be running at the measured copy bandwidth)
  vs torch       torch eager ÷ ours (a speed-up; > 1 means ours is faster)
  vs compile     torch.compile ÷ ours
  div. overhead  ours in this mode ÷ ours in "tokens" mode at the same shape, minus 1
Later files win where two hold the same record.  Only the standard library is used.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict

OURS = ("triton (graph)", "triton", "cpp")
VERIFY_COLUMNS = ("triton (graph)", "triton", "cpp", "torch", "torch.compile", "flashinfer")
DIVERGENCE_COLUMNS = ("triton", "cpp", "specfair-torch", "torch", "torch.compile")
MODE_ORDER = {"tokens": 0, "divergence": 1, "stats": 2, "ce": 0, "kl": 1, "alpha": 2, "tv": 3}
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def provider_label(info: dict) -> str:
    name = info.get("provider", "?")
    return f"{name} (graph)" if info.get("launch") == "graph" else name


def load(paths):
    """[(extra_info, median_seconds, machine_info)] from pytest-benchmark JSON files."""
    records = OrderedDict()
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        machine = data.get("machine_info", {})
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info") or {}
            stats = bench.get("stats") or {}
            if "op" not in info or "median" not in stats:
                continue
            key = (info.get("device"), info.get("threads"), info["op"], provider_label(info), info.get("mode"),
                   info.get("B"), info.get("K"), info.get("N"), info.get("V"), info.get("dtype"))
            records[key] = (info, stats["median"], machine)
    return list(records.values())


def fmt_us(x):
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_ratio(x):
    if x is None:
        return "—"
    return f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def fmt_bytes(n):
    if n is None:
        return "—"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB"


def device_title(info, machine):
    name = info.get("device") or machine.get("specfair_device") or "unknown device"
    if info.get("device_type") == "cpu" and info.get("threads"):
        name += f", {info['threads']} threads"
    bw = info.get("bandwidth_GBps")
    if bw:
        name += f" (measured copy bandwidth {bw:,.0f} GB/s)" if bw >= 100 else \
            f" (measured copy bandwidth {bw:.1f} GB/s)"
    return name


def ratio(num, den):
    return num / den if num is not None and den else None


def table(op, rows_in, columns):
    """rows_in: {row_key: {label: (info, median_s)}} -> Markdown lines."""
    present = [c for c in columns if any(c in cells for cells in rows_in.values())]
    extra = sorted({c for cells in rows_in.values() for c in cells} - set(present))
    present += extra
    verify = op == "verify"
    head = ["mode" if verify else "kind", "B, K, V" if verify else "N, V", "dtype", "bytes", "floor µs"]
    head += [f"{c} µs" for c in present]
    head += ["ours/floor", "vs torch", "vs compile"]
    head += ["div. overhead"] if verify else ["peak MiB ours / torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    ours_tokens = {}
    for key, cells in rows_in.items():
        if key[0] == "tokens":
            ours_tokens[key[1:]] = _ours(cells)[1]

    for key, cells in sorted(rows_in.items(), key=_row_order):
        mode, shape, dtype = key[0], key[1:-1], key[-1]
        any_info = next(iter(cells.values()))[0]
        med = {c: cells[c][1] * 1e6 for c in cells}
        floor = any_info.get("floor_us")
        label, ours = _ours(cells)
        torch_eager = med.get("torch")
        compiled = med.get("torch.compile")
        row = [mode, ", ".join(str(s) for s in shape), SHORT_DTYPE.get(dtype, dtype), fmt_bytes(any_info.get("bytes")),
               fmt_us(floor)]
        row += [fmt_us(med.get(c)) for c in present]
        row += [fmt_ratio(ratio(ours, floor)), fmt_ratio(ratio(torch_eager, ours)), fmt_ratio(ratio(compiled, ours))]
        if verify:
            base = ours_tokens.get(key[1:])
            row.append("—" if mode == "tokens" or base is None or ours is None else f"{(ours / base - 1) * 100:+.0f}%")
        else:
            row.append(f"{_peak_mib(cells, label)} / {_peak_mib(cells, 'torch')}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _peak_mib(cells, label):
    value = cells[label][0].get("peak_memory_bytes") if label in cells else None
    return "—" if value is None else f"{value / 2**20:,.0f}"


def _ours(cells):
    for c in OURS:
        if c in cells:
            return c, cells[c][1] * 1e6
    return None, None


def _row_order(item):
    key = item[0]
    mode, shape, dtype = key[0], key[1:-1], key[-1]
    return (tuple(s if s is not None else 0 for s in shape), str(dtype), MODE_ORDER.get(mode, 9), mode)


def build(records) -> str:
    sections = OrderedDict()
    for info, median, machine in records:
        dev = (info.get("device"), info.get("threads"))
        sec = sections.setdefault((dev, info["op"]), {"title": device_title(info, machine), "rows": OrderedDict(),
                                                      "load": None})
        if info.get("loadavg_1min") is not None:
            sec["load"] = max(sec["load"] or 0.0, info["loadavg_1min"])
        if info["op"] == "verify":
            row = (info.get("mode"), info.get("B"), info.get("K"), info.get("V"), info.get("dtype"))
        else:
            row = (info.get("mode"), info.get("N"), info.get("V"), info.get("dtype"))
        sections[(dev, info["op"])]["rows"].setdefault(row, {})[provider_label(info)] = (info, median)

    out = []
    for (_dev, op), sec in sections.items():
        load = f"; 1-min load average up to {sec['load']:.1f} during the run" if sec["load"] is not None else ""
        out.append(f"### `{op}` on {sec['title']}{load}")
        out.append("")
        if op == "verify":
            out += table(op, sec["rows"], VERIFY_COLUMNS)
        else:
            out += table(op, sec["rows"], DIVERGENCE_COLUMNS)
        out.append("")
    out.append("Medians of pytest-benchmark rounds (µs per call). floor = bytes ÷ measured copy bandwidth; "
               "ours = triton (graph), else triton, else cpp; vs torch / vs compile = their time ÷ ours; "
               "div. overhead = ours in this mode ÷ ours in tokens mode − 1. See benchmarks/README.md.")
    return "\n".join(out) + "\n"


GENERATE_ORDER = ("hf-verifier", "specfair-verifier-only", "hf-assisted-default", "hf-assisted", "specfair",
                  "specfair-padded", "specfair-compiled", "specfair-cudagraph", "specfair-auto")


def shipped_pair_records(paths, keep, key):
    """[(extra_info, machine_info)] of the records on the shipped pair for which ``keep(info)``
    holds, one per ``key(info)`` (later files win)."""
    records = OrderedDict()
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info") or {}
            if info.get("pair") == "default" and keep(info):
                records[key(info)] = (info, data.get("machine_info", {}))
    return list(records.values())


def load_generate(paths):
    """bench_generate.py's test_generate records (a number of tokens/s per record)."""
    return shipped_pair_records(
        paths, lambda i: isinstance(i.get("tokens_per_s"), (int, float)),
        lambda i: (i.get("device"), i.get("threads"), i["provider"], i.get("B"), str(i.get("K"))))


def build_generate(records) -> str:
    """One table per device: tokens/s per (batch, provider, K), ours over HF assisted at the
    same K (batch 1) and over the verifier alone at the same batch (Hugging Face's generate and
    our decode loop: two ratios), and ours' step split."""
    out = []
    devices = OrderedDict()
    for info, machine in records:
        devices.setdefault((info.get("device"), info.get("threads")), []).append((info, machine))
    for recs in devices.values():
        info0, machine0 = recs[0]
        load = max((i.get("loadavg_1min") or 0.0 for i, _ in recs), default=0.0)
        out += [f"#### Generation, shipped pair, greedy, {info0.get('new_tokens')} new tokens per row, on "
                f"{device_title(info0, machine0)}; 1-min load average up to {load:.1f} during the run", "",
                "| batch | provider | K | tokens/s | vs HF assisted, same K | vs verifier alone: HF / ours | "
                "ms per step: draft / verify fwd / kernel / bookkeeping |", "|---|---|---|---|---|---|---|"]
        tps = {(i["provider"], i["B"], str(i.get("K"))): i["tokens_per_s"] for i, _ in recs}
        rows = sorted(recs, key=lambda r: (r[0]["B"], GENERATE_ORDER.index(r[0]["provider"])
                                            if r[0]["provider"] in GENERATE_ORDER else 99, str(r[0].get("K"))))
        for info, _ in rows:
            B, prov, K = info["B"], info["provider"], str(info.get("K"))
            mine = prov.startswith("specfair") and prov != "specfair-verifier-only"
            vs_hf = ratio(info["tokens_per_s"], tps.get(("hf-assisted", B, K))) if mine else None
            vs_alone = " / ".join(fmt_ratio(ratio(info["tokens_per_s"], tps.get((p, B, p))))
                                  for p in ("hf-verifier", "specfair-verifier-only")) if mine else fmt_ratio(None)
            ps = info.get("per_step_ms") or {}
            split = " / ".join(f"{ps[k]:.1f}" for k in ("draft", "verify_forward", "kernel", "bookkeeping")
                               if k in ps) or "—"
            k_txt = K if K.isdigit() else ("auto" if prov == "specfair-auto" else "—")
            out.append(f"| {B} | {prov} | {k_txt} | {info['tokens_per_s']:,.1f} | {fmt_ratio(vs_hf)} | "
                       f"{vs_alone} | {split} |")
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


def load_paired(paths):
    """bench_generate.py's test_generate_paired records, one per device and batch size."""
    return shipped_pair_records(paths, lambda i: i.get("paired"), lambda i: (i.get("device"), i.get("threads"), i["B"]))


def build_paired(records) -> str:
    """Per batch size: each provider's tokens/s (median over interleaved rounds), then each
    paired ratio: the median over rounds of the ratio within a round, with its IQR."""
    out = []
    for info, machine in records:
        out += [f"#### Generation in interleaved rounds, shipped pair, batch {info['B']}, greedy, "
                f"{info['new_tokens']} new tokens per row, {info['rounds']} rounds, on "
                f"{device_title(info, machine)}; 1-min load average {info.get('loadavg_1min', 0):.1f}", "",
                "| provider | tokens/s | spread (max − min) / median |", "|---|---|---|"]
        out += [f"| {name} | {tps:,.1f} | {info['spread'][name]:.0%} |" for name, tps in info["tokens_per_s"].items()]
        out += ["", "| ratio of tokens/s, paired within each round | median | IQR |", "|---|---|---|"]
        out += [f"| {label} | {fmt_ratio(r['median'])} | {r['iqr'][0]:.2f}–{r['iqr'][1]:.2f} |"
                for label, r in info["ratios"].items()]
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("-o", "--output", help="write the Markdown here instead of stdout")
    args = parser.parse_args(argv)
    records, gen_records, paired = load(args.results), load_generate(args.results), load_paired(args.results)
    if not records and not gen_records and not paired:
        print("error: no specfair benchmark records in " + ", ".join(args.results), file=sys.stderr)
        return 1
    parts = [build(records) if records else "", build_generate(gen_records) if gen_records else "",
             build_paired(paired) if paired else ""]
    text = "\n".join(p for p in parts if p)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
