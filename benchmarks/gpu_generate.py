#!/usr/bin/env python3
"""End-to-end generation benchmark of `specfair.generator` on the shipped default pair.

One script for the GPU machine (no network, a few minutes), also runnable on a CPU:

    python3 benchmarks/gpu_generate.py                     # CUDA, writes $OUT/gpu_generate.json
    python3 benchmarks/gpu_generate.py --device cpu --quick

Sections (each in its own try/except; the JSON is rewritten after every section, so a
failure or a timeout still leaves everything measured before it):

  env            versions, device
  correctness    greedy output of ours == the verifier's own greedy decoding (HF generate), B=1 and B=8
  cost_ratio     measure_costs at B=1 and B=32: c = drafter step / verifier step, and r_K = verifier
                 forward over K+1 tokens / over 1 token
  batch1         tokens/s at batch 1: ours (K = 1, 2, 4, and auto) vs HF assisted generation
                 (`verifier.generate(assistant_model=drafter)`) with the same K (constant schedule,
                 no confidence cut-off) and with HF's default schedule; verifier alone (HF and ours);
                 ours' per-step time breakdown (draft, verify forward, kernel, bookkeeping)
  batch32        tokens/s at batch 32: ours (K = 2, 4; greedy and T=1), verifier alone (ours, HF);
                 HF assisted generation at batch 32 is attempted and its error recorded; the summary
                 gives the best greedy ours over the faster verifier alone (the target is >= 1)
  cuda_graph     cuda_graph=True (decode forwards replayed as CUDA graphs), fixed_step=True (eager) and
                 both (the whole draft+verify step replayed as one CUDA graph) vs eager static and
                 eager dynamic caches, B = 1 and 32, K = 2 and 4: tokens/s, first-call (compile or
                 capture) seconds, and whether the tokens are the eager path's (CUDA only; on a CPU
                 the error is recorded)
  auto_vs_fixed  two tasks with different acceptance (well- vs under-represented languages of the
                 drafter): tokens/s per task for fixed K in {1, 2, 4} and for num_draft="auto",
                 at batch 1 and batch 4
  speedup        `measure_speedup` per task (measured wall-clock speed-up beside S(alpha; K, c))

All timings synchronise the device; tokens/s figures come from runs with ``profile=False``
(no per-section synchronisation), the breakdown from separate ``profile=True`` runs.
Greedy decoding with EOS disabled everywhere, so every provider produces the same tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

TASK_PROMPTS = {
    "well-represented": [
        "The installation system can be started from a USB stick", "Before you begin, make sure that",
        "Die Installation von Debian ist", "Le système de fichiers racine doit être",
        "El programa de instalación", "Il sistema di installazione", "De installatie van Debian",
        "Instalační systém Debianu"],
    "under-represented": [
        "Программа установки Debian", "Перед началом установки", "Η εγκατάσταση του Debian",
        "Debian のインストール", "Debian 설치 프로그램은", "Trình cài đặt Debian",
        "Система установки загружается", "Το σύστημα εγκατάστασης"],
}
ALL_PROMPTS = [p for ps in TASK_PROMPTS.values() for p in ps]


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def new_tokens(out, prompt_width) -> int:
    """New tokens in a GenerationOutput or in a Hugging Face output tensor (no EOS stops)."""
    if hasattr(out, "num_new_tokens"):
        return int(out.num_new_tokens.sum())
    return int(out.shape[0] * (out.shape[1] - prompt_width))


def timed(fn, device, reps):
    """Median seconds of ``reps`` calls (after one warm-up call) and the last result."""
    out = fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


class Bench:
    def __init__(self, args):
        import torch

        import specfair
        from specfair.models import load_pair

        self.args = args
        self.device = torch.device(args.device)
        dtype = getattr(torch, args.dtype)
        self.drafter, self.verifier, self.tok = load_pair(
            specfair.default_pair_path("drafter"), specfair.default_pair_path("verifier"), device=self.device,
            dtype=dtype)
        self.tok.padding_side = "left"
        self.pad = self.tok.pad_token_id
        self.N = args.new_tokens
        self.reps = args.reps
        self._gens = {}

    def enc(self, texts):
        e = self.tok(texts, return_tensors="pt", padding=True)
        return e.input_ids.to(self.device), e.attention_mask.to(self.device)

    def batch_prompts(self, B):
        return [ALL_PROMPTS[i % len(ALL_PROMPTS)] for i in range(B)]

    # one call each -------------------------------------------------------------------------
    def generator(self, K, temperature=0.0, profile=False):
        """One generator per setting, so "auto" measures its cost ratio once per batch size."""
        from specfair.generator import SpeculativeGenerator

        key = (K, temperature, profile)
        if key not in self._gens:
            self._gens[key] = SpeculativeGenerator(self.drafter, self.verifier, num_draft=K,
                                                   temperature=temperature, profile=profile)
        return self._gens[key]

    def ours(self, ids, mask, K, temperature=0.0, profile=False, seed=0):
        gen = self.generator(K, temperature, profile)
        if K == "auto":
            gen.cost_ratio(ids.shape[0])  # measured outside the timed call
        return gen.generate(ids, mask, max_new_tokens=self.N, eos_token_id=[], seed=seed)

    def ours_verifier_only(self, ids, mask):
        from specfair.baseline import generate_verifier_only

        return generate_verifier_only(self.verifier, ids, mask, self.N, eos_token_id=[], temperature=0.0,
                                      profile=False)

    def hf(self, ids, mask, assistant=False, K=None):
        gc = self.drafter.generation_config
        saved = (getattr(gc, "num_assistant_tokens", None), getattr(gc, "num_assistant_tokens_schedule", None),
                 getattr(gc, "assistant_confidence_threshold", None))
        kw = {}
        if assistant:
            kw["assistant_model"] = self.drafter
            if K is not None:  # the same drafting as ours: K tokens every step
                gc.num_assistant_tokens = K
                gc.num_assistant_tokens_schedule = "constant"
                gc.assistant_confidence_threshold = 0.0
        try:
            return self.verifier.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.N,
                                          eos_token_id=None, do_sample=False, pad_token_id=self.pad, **kw)
        finally:
            gc.num_assistant_tokens, gc.num_assistant_tokens_schedule, gc.assistant_confidence_threshold = saved

    def tokens_per_s(self, fn, prompts_list):
        """Run ``fn(ids, mask)`` on each prompt list (one call each), median of reps of the total."""
        encs = [self.enc(p) for p in prompts_list]

        def all_calls():
            return [fn(i, m) for i, m in encs]

        seconds, outs = timed(all_calls, self.device, self.reps)
        tokens = sum(new_tokens(o, i.shape[1]) for o, (i, _) in zip(outs, encs))
        return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}, outs


# --- sections --------------------------------------------------------------------------------

def section_env(b, args):
    import torch
    import transformers

    import specfair_kernels as sk

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": str(b.device),
            "device_name": torch.cuda.get_device_name(b.device) if b.device.type == "cuda" else platform.processor(),
            "backends": sk.available_backends(b.device), "dtype": args.dtype, "new_tokens": b.N,
            "reps": b.reps, "threads": torch.get_num_threads(),
            "verifier_params": sum(p.numel() for p in b.verifier.parameters()),
            "drafter_params": sum(p.numel() for p in b.drafter.parameters())}
    return info


def section_correctness(b, args):
    import torch

    out = {}
    for B in (1, 8):
        ids, mask = b.enc(b.batch_prompts(B))
        ref = b.hf(ids, mask)
        for K in (1, 4):
            ours = b.ours(ids, mask, K)
            out[f"B{B}_K{K}_equal_to_hf_greedy"] = bool(torch.equal(ours.sequences.cpu(), ref.cpu()))
        if B == 1:
            assisted = b.hf(ids, mask, assistant=True, K=4)
            out["B1_hf_assisted_equal_to_hf_greedy"] = bool(torch.equal(assisted.cpu(), ref.cpu()))
    return out


def section_cost_ratio(b, args):
    from specfair.costs import measure_costs

    return {f"B{B}": measure_costs(b.drafter, b.verifier, batch_size=B, max_draft=8, repeats=20) for B in (1, 32)}


def section_batch1(b, args):
    prompts_list = [[p] for p in (ALL_PROMPTS[:args.batch1_prompts])]
    res = {"prompts": len(prompts_list)}
    res["hf_verifier_only"], _ = b.tokens_per_s(lambda i, m: b.hf(i, m), prompts_list)
    res["ours_verifier_only"], _ = b.tokens_per_s(b.ours_verifier_only, prompts_list)
    res["hf_assisted_default"], _ = b.tokens_per_s(lambda i, m: b.hf(i, m, assistant=True), prompts_list)
    for K in args.ks:
        res[f"hf_assisted_K{K}"], _ = b.tokens_per_s(lambda i, m, K=K: b.hf(i, m, assistant=True, K=K), prompts_list)
        res[f"ours_K{K}"], outs = b.tokens_per_s(lambda i, m, K=K: b.ours(i, m, K), prompts_list)
        res[f"ours_K{K}"]["acceptance"] = statistics.mean(float(o.stats.acceptance_rate()[0]) for o in outs[-1:])
        res[f"ours_K{K}"]["vs_hf_assisted_same_K"] = (res[f"ours_K{K}"]["tokens_per_s"]
                                                      / res[f"hf_assisted_K{K}"]["tokens_per_s"])
        prof = [b.ours(i, m, K, profile=True) for i, m in (b.enc(p) for p in prompts_list)]
        steps = sum(o.steps for o in prof)
        res[f"ours_K{K}"]["per_step_ms"] = {k: 1e3 * sum(o.timings[k] for o in prof) / steps
                                            for k in ("draft", "verify_forward", "kernel", "bookkeeping", "total")}
        res[f"ours_K{K}"]["steps"] = steps
    res["ours_auto"], outs = b.tokens_per_s(lambda i, m: b.ours(i, m, "auto"), prompts_list)
    best_ours = max((k for k in res if k.startswith("ours_K")), key=lambda k: res[k]["tokens_per_s"])
    best_hf = max((k for k in res if k.startswith("hf_assisted")), key=lambda k: res[k]["tokens_per_s"])
    res["summary"] = {
        "best_ours": best_ours, "best_hf_assisted": best_hf,
        "best_ours_vs_best_hf_assisted": res[best_ours]["tokens_per_s"] / res[best_hf]["tokens_per_s"],
        "best_ours_vs_hf_verifier_only": res[best_ours]["tokens_per_s"] / res["hf_verifier_only"]["tokens_per_s"],
        "ours_auto_vs_best_hf_assisted": res["ours_auto"]["tokens_per_s"] / res[best_hf]["tokens_per_s"],
    }
    return res


def section_batch32(b, args):
    B = 32
    plist = [b.batch_prompts(B)]
    res = {"batch": B}
    res["hf_verifier_only"], _ = b.tokens_per_s(lambda i, m: b.hf(i, m), plist)
    res["ours_verifier_only"], _ = b.tokens_per_s(b.ours_verifier_only, plist)
    for K in (2, 4):
        for T in (0.0, 1.0):
            key = f"ours_K{K}_T{T:g}"
            res[key], outs = b.tokens_per_s(lambda i, m, K=K, T=T: b.ours(i, m, K, temperature=T), plist)
            res[key]["acceptance"] = float(outs[-1].stats.acceptance_rate()[0])
            prof = b.ours(*b.enc(plist[0]), K, temperature=T, profile=True)
            res[key]["per_step_ms"] = {k: 1e3 * v for k, v in prof.time_per_step().items()}
            res[key]["steps"] = prof.steps
    best = max((k for k in res if k.startswith("ours_K") and k.endswith("_T0")), key=lambda k: res[k]["tokens_per_s"])
    res["summary"] = {"best_ours_greedy": best, "best_ours_vs_verifier_alone": (
        res[best]["tokens_per_s"] / max(res["hf_verifier_only"]["tokens_per_s"],
                                        res["ours_verifier_only"]["tokens_per_s"]))}
    try:
        ids, mask = b.enc(plist[0])
        b.hf(ids, mask, assistant=True, K=4)
        res["hf_assisted_K4"] = "ran (unexpected)"
    except Exception as exc:  # assisted generation supports batch 1 only
        res["hf_assisted_K4"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return res


def section_cuda_graph(b, args):
    """cuda_graph=True (static caches, decode forwards replayed as CUDA graphs), fixed_step=True
    (eager) and both together (the whole step replayed as one CUDA graph) against the eager
    static and the eager dynamic path, greedy, at batch 1 and 32: tokens/s and the same tokens."""
    import torch

    from specfair.generator import SpeculativeGenerator

    res = {}
    for B in (1, 32):
        ids, mask = b.enc(b.batch_prompts(B))
        alone, _ = b.tokens_per_s(b.ours_verifier_only, [b.batch_prompts(B)])
        res[f"B{B}_ours_verifier_only"] = alone
        for K in (2, 4):
            row, ref = {}, None
            for name, kw in (("eager_dynamic", {}), ("eager_static", {"cache": "static"}),
                             ("cuda_graph", {"cache": "static", "cuda_graph": True}),
                             ("fixed_step", {"cache": "static", "fixed_step": True}),
                             ("step_graph", {"cache": "static", "fixed_step": True, "cuda_graph": True})):
                try:   # one option failing (a capture error) must not take the others' figures with it
                    gen = SpeculativeGenerator(b.drafter, b.verifier, num_draft=K, temperature=0.0, profile=False,
                                               **kw)

                    def run(gen=gen, ids=ids, mask=mask):
                        return gen.generate(ids, mask, max_new_tokens=b.N, eos_token_id=[], seed=0)

                    t0 = time.perf_counter()
                    first = run()   # compiles and captures on the first call
                    sync(b.device)
                    first_s = time.perf_counter() - t0
                    seconds, out = timed(run, b.device, b.reps)
                except Exception as exc:
                    row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    continue
                ref = out.sequences if ref is None else ref
                row[name] = {"tokens_per_s": int(out.num_new_tokens.sum()) / seconds, "seconds": seconds,
                             "first_call_s": first_s,
                             "same_tokens_as_eager_dynamic": bool(torch.equal(out.sequences, ref)
                                                                  and torch.equal(first.sequences, ref))}
            for name in ("cuda_graph", "fixed_step", "step_graph"):
                if "tokens_per_s" in row.get(name, {}) and "tokens_per_s" in row.get("eager_dynamic", {}):
                    row[f"{name}_vs_eager_dynamic"] = row[name]["tokens_per_s"] / row["eager_dynamic"]["tokens_per_s"]
                    row[f"{name}_vs_ours_verifier_only"] = row[name]["tokens_per_s"] / alone["tokens_per_s"]
            res[f"B{B}_K{K}"] = row
    return res


def section_auto_vs_fixed(b, args):
    import specfair_kernels as sk
    from specfair.generator import SpeculativeGenerator

    res = {}
    tasks = {name: ps[:args.task_prompts] for name, ps in TASK_PROMPTS.items()}
    for mode, B in (("batch1", 1), ("batch4", 4)):
        rows = {}
        for K in (1, 2, 4, "auto"):
            per_task = {}
            gen = SpeculativeGenerator(b.drafter, b.verifier, num_draft=K, temperature=0.0, profile=False)
            stats = sk.TaskStats(2, gen.max_draft, device=b.device)
            for t, (name, plist) in enumerate(tasks.items()):
                chunks = [plist[i:i + B] for i in range(0, len(plist), B)]
                encs = [b.enc(c) for c in chunks]

                def run(encs=encs, t=t, gen=gen, stats=stats):
                    return [gen.generate(i, m, max_new_tokens=b.N, eos_token_id=[], task_ids=[t] * i.shape[0],
                                         stats=stats, seed=0) for i, m in encs]

                seconds, outs = timed(run, b.device, max(1, b.reps - 1))
                tokens = sum(int(o.num_new_tokens.sum()) for o in outs)
                per_task[name] = {"tokens_per_s": tokens / seconds, "seconds": seconds,
                                  "num_draft": outs[-1].num_draft[t]}
            acc = stats.expected_acceptance().tolist()
            for t, name in enumerate(TASK_PROMPTS):
                per_task[name]["expected_acceptance"] = acc[t]
            total_s = sum(v["seconds"] for v in per_task.values())
            per_task["all_tokens_per_s"] = sum(len(p) for p in tasks.values()) * b.N / total_s
            if K == "auto":
                per_task["cost_ratio"] = gen.cost_ratio(B)
                per_task["verify_cost"] = gen.verify_cost(B)
            rows[f"K{K}"] = per_task
        best_fixed = max((k for k in rows if k != "Kauto"), key=lambda k: rows[k]["all_tokens_per_s"])
        rows["summary"] = {"best_fixed": best_fixed,
                           "auto_vs_best_fixed": (rows["Kauto"]["all_tokens_per_s"]
                                                  / rows[best_fixed]["all_tokens_per_s"]),
                           "auto_vs_K4": rows["Kauto"]["all_tokens_per_s"] / rows["K4"]["all_tokens_per_s"]}
        res[mode] = rows
    return res


def section_speedup(b, args):
    from specfair.baseline import measure_speedup
    from specfair.generator import SpeculativeGenerator

    tasks = [ps[:args.task_prompts] for ps in TASK_PROMPTS.values()]
    ids, mask = b.enc([p for ps in tasks for p in ps])
    task_ids = [t for t, ps in enumerate(tasks) for _ in ps]
    res = {}
    for K in (4, "auto"):
        gen = SpeculativeGenerator(b.drafter, b.verifier, num_draft=K, temperature=0.0, profile=False)
        for B in (1, 4):
            rep = measure_speedup(gen, ids, mask, task_ids=task_ids, num_tasks=2, max_new_tokens=b.N, seed=0,
                                  eos_token_id=[], batch_size=B)
            res[f"K{K}_B{B}"] = {
                "cost_ratio": rep["cost_ratio"], "measured_speedup": rep["measured_speedup"],
                "per_task": {name: {k: v for k, v in rep["per_task"][t].items() if k != "spec_timings"}
                             for t, name in enumerate(TASK_PROMPTS)}}
    return res


SECTIONS = [("correctness", section_correctness), ("cost_ratio", section_cost_ratio), ("batch1", section_batch1),
            ("batch32", section_batch32), ("cuda_graph", section_cuda_graph), ("auto_vs_fixed", section_auto_vs_fixed),
            ("speedup", section_speedup)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repetitions (a CPU check)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--out", default=None, help="output directory (default $OUT, else benchmarks/results)")
    ap.add_argument("--only", default=None, help="comma-separated section names")
    args = ap.parse_args(argv)

    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    # Sized for about 5 minutes on an H100 with the default pair, whose forwards are bound by
    # Python/launch overhead there (about 7 ms per verifier step, 2.5 ms per drafter step).
    args.new_tokens = 24 if args.quick else 96
    args.reps = 1 if args.quick else 2
    args.batch1_prompts = 2 if args.quick else 3
    args.ks = (2, 4) if args.quick else (1, 2, 4)
    args.task_prompts = 2 if args.quick else 4
    out_dir = Path(args.out or os.environ.get("OUT") or Path(__file__).resolve().parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("gpu_generate.json" if args.device.startswith("cuda") else "cpu_generate.json")
    result = {"script": "benchmarks/gpu_generate.py", "args": vars(args), "sections": {}, "errors": {},
              "seconds": {}}

    def write():
        from specfair._util import json_safe

        path.write_text(json.dumps(json_safe(result), indent=1, default=str, allow_nan=False))  # inf -> null

    t_all = time.perf_counter()
    try:
        bench = Bench(args)
        result["sections"]["env"] = section_env(bench, args)
    except Exception:
        result["errors"]["setup"] = traceback.format_exc()
        write()
        print(result["errors"]["setup"], file=sys.stderr)
        return 1
    write()
    only = set(args.only.split(",")) if args.only else None
    for name, fn in SECTIONS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            result["sections"][name] = fn(bench, args)
        except Exception:
            result["errors"][name] = traceback.format_exc()
            print(f"[{name}] FAILED\n{result['errors'][name]}", file=sys.stderr)
        result["seconds"][name] = time.perf_counter() - t0
        print(f"[{name}] {result['seconds'][name]:.1f} s", flush=True)
        write()
    result["seconds"]["total"] = time.perf_counter() - t_all
    write()
    summary = {k: result["sections"].get(k, {}).get("summary") for k in ("batch1", "batch32")}
    summary["auto_vs_fixed"] = {m: v.get("summary") for m, v in result["sections"].get("auto_vs_fixed", {}).items()}
    print(json.dumps(summary, indent=1, default=str))
    print(f"wrote {path}")
    return 0 if not result["errors"] else 2


if __name__ == "__main__":
    sys.exit(main())
