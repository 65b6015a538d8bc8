"""RRDBNet x4 (Real-ESRGAN x4plus size) on CPU, jsr against every PyTorch variant: now ``benchmarks/archs.py
--arch rrdbnet`` (which measures every RGB generator architecture the same way); this alias keeps the old command
line and the old JSON layout (one network's ``network`` / ``cases`` / ``checks`` at the top level).

    /work/venv312/bin/python benchmarks/rrdbnet.py --torch-python /work/venv311/bin/python --json out.json
        [--quick] [--no-torch] [--rounds 2] [--budget-s 450] [--repeats 3] [--train-repeats 2] [--warmup 1]

Every option is archs.py's (see its docstring for the method); ``--arch`` is fixed to rrdbnet.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("jsr_benchmarks_archs", Path(__file__).resolve().parent / "archs.py")
archs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(archs)

CASES, TORCH_VARIANTS, LABELS = archs.CASES, archs.TORCH_VARIANTS, archs.LABELS


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--arch" in argv or any(a.startswith("--arch=") for a in argv):
        raise SystemExit("benchmarks/rrdbnet.py measures rrdbnet only: use benchmarks/archs.py --arch for others")
    json_path = None
    if "--json" in argv:  # written here, in the old layout
        i = argv.index("--json")
        json_path, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
    if "--budget-s" not in argv:
        argv += ["--budget-s", "450"]  # the old default
    report = archs.main(["--arch", "rrdbnet", *argv])
    if not report:  # the PyTorch worker
        return report
    one = report["archs"]["rrdbnet"]
    flat = {k: v for k, v in report.items() if k not in ("archs", "summary", "table_markdown")}
    flat |= {"benchmark": "benchmarks/rrdbnet.py (alias of benchmarks/archs.py --arch rrdbnet)"}
    flat |= {"network": one["network"], "cases": one["cases"], "checks": one["checks"]}
    flat["table_markdown"] = report["table_markdown"]
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(flat, indent=2) + "\n")
    return flat


if __name__ == "__main__":
    main()
