"""Where a step's time goes, jsr beside PyTorch: per-operation profiles of one case of benchmarks/run.py, grouped.

    python benchmarks/profile_step.py [--case train_mse] [--dtype bfloat16] [--torch-variant channels_last]
                                      [--steps 3] [--json out.json] [--quick] [--no-torch]

jsr: run.py's compiled train step (same config, conv path, oneDNN and malloc settings as ``run.py`` resolves
them), timed, then traced with ``jax.profiler`` for ``--steps`` steps: every XLA:CPU thunk (a fusion, a
convolution, a library call, a dot) is one event. PyTorch: ``torch_reference.py --profile-steps`` (the same step
under ``torch.profiler``, self CPU time of every aten op). Both sides are grouped by ``group``: convolution
(forward and both gradients, whichever library runs them), matmul, other (normalisation, activations, the
optimiser, layout copies, reductions). Figures are ms per step. XLA runs independent thunks on two threads, so
jsr's groups can sum to more than its wall time; PyTorch's ops run one after another.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

# run.py beside this file; appended, so that a test process's own modules of the same names are found first
sys.path.append(str(Path(__file__).resolve().parent))
import run  # noqa: E402

GROUPS = ("convolution", "matmul", "other")
# thunk-executor bookkeeping and control flow whose time is that of the thunks they wrap (counted already)
_NOT_OPS = re.compile(r"^(ThunkExecutor|end:|Threadpool|SlinkyThreadPool|while|conditional|call\b)")


def group(op: str, hlo_groups: dict[str, str] | None = None) -> str | None:
    """The group of one profiled op: an XLA thunk (``hlo_groups``: its instruction's group, from what it computes)
    or an aten op (by name); None for wrappers that hold no work of their own."""
    if _NOT_OPS.match(op):
        return None
    instruction = op.split("__")[0]  # 'custom-call.7.clone__onednn$convolution' -> its HLO instruction's name
    if hlo_groups is not None and instruction in hlo_groups:
        return hlo_groups[instruction]
    name = op.lower()
    if "convolution" in name or "conv_general_dilated" in name:  # aten's, XLA's and oneDNN's convolutions
        return "convolution"
    if re.search(r"(^|[^a-z])(dot|dot_general|matmul|mm|addmm|bmm|baddbmm)([^a-z]|$)", name):
        return "matmul"
    return "other"


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\b([\w\-]+)\(", re.M)


def hlo_groups(hlo: str) -> dict[str, str]:
    """Every instruction of an optimised HLO module -> the group of its work: 'convolution' if it is (or its fused
    computation holds) a convolution or a convolution library call, 'matmul' for dots, else 'other'. XLA:CPU names
    fusions by their first ops ('ynn_fusion' may be a dot, a convolution or a reduction), so the name alone
    cannot tell."""
    bodies = dict(re.findall(r"^%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))

    def of(line: str, depth: int = 0) -> str:
        if " convolution(" in line or ("custom-call(" in line and "convolution" in line):
            return "convolution"
        if " dot(" in line or ("custom-call(" in line and "matmul" in line):
            return "matmul"
        called = re.search(r"calls=%([\w.\-]+)", line)
        if called and depth < 4:
            inner = [of(body_line, depth + 1) for body_line in bodies.get(called.group(1), "").splitlines()]
            return next((g for g in ("convolution", "matmul") if g in inner), "other")
        return "other"

    groups = {}
    for line in hlo.splitlines():
        found = _INSTRUCTION.match(line)
        if found:
            groups[found.group(1)] = of(line)
    return groups


def op_kind(name: str) -> str:
    """An XLA thunk name without its instance numbers ('custom-call.162.clone__onednn$convolution' ->
    'custom-call__onednn$convolution'), so that the many instances of one kind add up."""
    return re.sub(r"\.(clone)?\d*", "", name)


def summary(ops: list[tuple[str, str | None, float]], wall_ms: float, top: int = 12) -> dict:
    """``ops``: (op kind, group, ms per step) entries; the groups' sums, the wall time and the ``top`` largest kinds
    (each named with its group)."""
    groups = dict.fromkeys(GROUPS, 0.0)
    kinds: dict[str, float] = collections.Counter()
    for kind, g, ms in ops:
        if g:
            groups[g] += ms
            kinds[f"{kind} [{g}]"] += ms
    return {"wall_ms": wall_ms, "groups_ms": groups, "top_ops_ms": dict(kinds.most_common(top))}


def jsr_profile(args) -> dict:
    import jax
    from jax.profiler import ProfileData

    step, info = run.jsr_train(args.case, args)
    times = run.timed(step, args.warmup, args.repeats)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(args.steps):
            step()
        jax.profiler.stop_trace()
        files = sorted(Path(trace_dir).rglob("*.xplane.pb"))
        if not files:
            raise SystemExit(f"jax.profiler wrote no trace under {trace_dir}")
        data = ProfileData.from_file(str(files[-1]))
    by_instruction = hlo_groups(step.compiled.as_text())
    ops = []
    for plane in data.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            if line.name == "python" or "XLAExecute" in line.name:  # Python frames; the whole-program wait
                continue
            for event in line.events:
                ms = event.duration_ns / 1e6 / args.steps
                ops.append((op_kind(event.name), group(event.name, by_instruction), ms))
    return summary(ops, statistics.median(times) * 1e3, args.top) | {"conv": args.conv, "compile_s": info["compile_s"]}


def torch_profile(args, python: str) -> dict:
    """``torch_reference.py`` with ``--profile-steps``, through run.py's command line for the same case."""
    result = run.run_torch(args.case, args, python, 0, args.torch_variant, ["--profile-steps", str(args.steps)])
    if "error" in result:
        return result
    wall = statistics.median(result["times_s"]) * 1e3
    ops = [(name, group(name), ms) for name, ms in result["profile_ms"].items()]
    return summary(ops, wall, args.top) | {"variant": args.torch_variant}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="train_mse", choices=["train_mse", "train_gan"])
    p.add_argument("--steps", type=int, default=3, help="profiled steps per side (after the timed ones)")
    p.add_argument("--torch-variant", default="channels_last", choices=list(run.TORCH_VARIANTS))
    p.add_argument("--top", type=int, default=12, help="largest ops listed per side")
    known, rest = p.parse_known_args(argv)
    args = run.parse_args(["--cases", known.case, *rest])  # run.py's own options: --dtype, --conv, --quick, ...
    for name, value in vars(known).items():
        setattr(args, name, value)
    return args


def format_report(report: dict) -> str:
    sides = [(name, report[name]) for name in ("jsr", "torch") if name in report and "groups_ms" in report[name]]
    lines = [f"{report['case']} {report['dtype']}, ms per step: " + ", ".join(n for n, _ in sides)]
    lines.append(f"{'':14s}" + "".join(f"{n:>12s}" for n, _ in sides))
    lines.append(f"{'wall':14s}" + "".join(f"{s['wall_ms']:12.1f}" for _, s in sides))
    for g in GROUPS:
        lines.append(f"{g:14s}" + "".join(f"{s['groups_ms'][g]:12.1f}" for _, s in sides))
    for name, side in sides:
        lines.append(f"{name} largest: " + ", ".join(f"{op} {ms:.1f}" for op, ms in side["top_ops_ms"].items()))
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch_python = None if args.no_torch else run.find_torch_python(args.torch_python)
    if not args.no_torch and torch_python is None:
        raise SystemExit("no Python with torch found: pass --torch-python or --no-torch")
    run.configure_process(args)  # oneDNN flags, malloc, conv path: as run.py and training resolve them
    report = {"case": args.case, "dtype": args.dtype, "machine": run.machine_name(), "steps": args.steps}
    report["versions"] = run.versions(None, args)
    report["jsr"] = jsr_profile(args)
    if torch_python:
        report["torch"] = torch_profile(args, torch_python)
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
