"""Where a worker's model time goes, and whether another CPU runtime would shorten it.

    python bench/bench_runtime.py [--parts ops,openvino,corpus] [--sample 150]

The inputs are the real ones: every tensor PaddleX hands ONNX Runtime while the default
profile reads the corpus's A4 pages (XFUND and FUNSD), captured once.

- ``ops``: ONNX Runtime's own profiler (one thread, the worker's session options), time per
  operator type for tiny's detector and recognizer and small's recognizer (the cascade's).
- ``openvino`` (needs ``pip install openvino``; not a dependency): milliseconds per call,
  ONNX Runtime against OpenVINO at fp32 and bf16 (bf16 is native only on CPUs with AMX or
  AVX512-BF16), with the model's dynamic width and reshaped to the 320-px width that most
  line crops are padded to; and how many lines keep every time step's best class.
- ``corpus`` (needs openvino): the default settings over the whole corpus, twice, with
  ONNX Runtime, and with every call of a static shape (320-px lines, A4 pages) sent to an
  OpenVINO bf16 model compiled for that shape (the rest stays on ONNX Runtime), scored with
  ``../shared/tools/ocr_score.py``. An experiment: PaddleX's runner is patched here only.

Not tests: figures for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import MODELS, REPO, machine, score

sys.path.insert(0, str(REPO / "daemon"))

from bench_cascade import load_pages, parse_score, settings_for  # noqa: E402

DEFAULTS = "<0.93+en"
MODELS_TIMED = {"tiny det": ("ppocrv6-tiny", "det"), "tiny rec": ("ppocrv6-tiny", "rec"), "small rec": ("ppocrv6-small", "rec")}


def onnx_path(profile: str, role: str) -> str:
    return str(MODELS / profile / role / "inference.onnx")


def capture(cache: Path) -> dict[str, list[Any]]:
    """Every input PaddleX gives ONNX Runtime for the A4 pages, by role (det / rec)."""
    from paddlex.inference.models.runners import onnxruntime_runner as runner

    from ocr_inbox.ocr import engine

    seen: dict[str, list[Any]] = collections.defaultdict(list)
    call = runner.ONNXRuntimeRunner.__call__

    def recording(self: Any, x: Any = None, **kw: Any) -> Any:
        if "ppocrv6-tiny" in str(self.model_dir):
            seen[Path(self.model_dir).name].append((x[0] if isinstance(x, list) else x).copy())
        return call(self, x, **kw)

    runner.ONNXRuntimeRunner.__call__ = recording
    try:
        eng = engine.create(settings_for("tiny", cache))  # type: ignore[arg-type]
        for rel, imgs in load_pages():
            if rel.startswith(("xfund", "funsd")):
                for im in imgs:
                    eng.recognise(im)  # type: ignore[arg-type]
    finally:
        runner.ONNXRuntimeRunner.__call__ = call
    return seen


def ort_session(path: str, profile_prefix: str = "") -> Any:
    import onnxruntime as ort

    from ocr_inbox.ocr.engine import engine_config

    so = ort.SessionOptions()
    for k, v in engine_config("onnxruntime", 1, "cpu").items():
        setattr(so, k, v)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ops(inputs: dict[str, list[Any]], sample: int, work: Path) -> None:
    print("\n## ONNX Runtime: time per operator type (its profiler, 1 thread)\n")
    print("| model | calls | ms/call | top operators (share of kernel time) |")
    print("|---|---|---|---|")
    for label, (profile, role) in MODELS_TIMED.items():
        xs = random.Random(0).sample(inputs[role], min(sample, len(inputs[role])))
        s = ort_session(onnx_path(profile, role), str(work / f"ort-{profile}-{role}"))
        name = s.get_inputs()[0].name
        for x in xs:
            s.run(None, {name: x})
        events = json.load(open(s.end_profiling()))
        by_op: collections.Counter[str] = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by_op[e["args"]["op_name"]] += e["dur"]
        total = sum(by_op.values())
        run_us = sum(e["dur"] for e in events if e.get("name") == "model_run")
        top = ", ".join(f"{op} {d / total:.0%}" for op, d in by_op.most_common(6))
        print(f"| {label} | {len(xs)} | {run_us / len(xs) / 1000:.2f} | {top} |")


def same_lines(outs: list[Any], refs: list[Any]) -> float:
    return sum(bool((o.argmax(-1) == r.argmax(-1)).all()) for o, r in zip(outs, refs, strict=True)) / len(refs)


def openvino_calls(inputs: dict[str, list[Any]], sample: int) -> None:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    print(f"\n## OpenVINO {ov.__version__} vs ONNX Runtime, per call (1 thread; "
          f"CPU capabilities {core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')})\n")
    print("| model | shapes | ONNX Runtime ms | OpenVINO fp32 ms | OpenVINO bf16 ms (1st / 2nd pass) | lines with every step's class kept, bf16 |")
    print("|---|---|---|---|---|---|")
    for label, (profile, role) in MODELS_TIMED.items():
        path = onnx_path(profile, role)
        pool = inputs[role]
        xs = random.Random(1).sample(pool, min(sample, len(pool)))
        cases: list[tuple[str, list[Any], list[int] | None]] = [("as PaddleX sends them", xs, None)]
        if role == "rec":
            x320 = [x for x in pool if x.shape[3] == 320][:sample]
            cases.append(("static 48x320", x320, [1, 3, 48, 320]))
        for what, batch, static in cases:
            s = ort_session(path)
            name = s.get_inputs()[0].name
            refs = [s.run(None, {name: x})[0] for x in batch]
            t = time.perf_counter()
            for x in batch:
                s.run(None, {name: x})
            ort_ms = (time.perf_counter() - t) / len(batch) * 1000
            res = {}
            for prec in ("f32", "bf16"):
                model = core.read_model(path)
                if static:
                    model.reshape(static)
                req = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": prec,
                                                        "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
                passes = []
                for _ in range(2):
                    t = time.perf_counter()
                    outs = [np.array(req.infer([x])[0]) for x in batch]
                    passes.append((time.perf_counter() - t) / len(batch) * 1000)
                res[prec] = (passes, f"{same_lines(outs, refs):.1%}" if role == "rec" else "–")
            print(f"| {label} | {what} ({len(batch)}) | {ort_ms:.2f} | {res['f32'][0][1]:.2f} | "
                  f"{res['bf16'][0][0]:.2f} / {res['bf16'][0][1]:.2f} | {res['bf16'][1]} |")


def corpus(work: Path) -> None:
    """The default settings over the corpus: ONNX Runtime alone, then static shapes on OpenVINO bf16."""
    import subprocess

    for mode in ("onnxruntime", "openvino-bf16"):
        out = subprocess.run([sys.executable, __file__, "--corpus-child", mode, "--work", str(work)],
                             capture_output=True, text=True, check=True).stdout
        print(out, end="")


def corpus_child(mode: str, work: Path) -> None:
    import numpy as np

    stats = {"openvino calls": 0, "compile s": 0.0}
    if mode != "onnxruntime":
        import openvino as ov
        from paddlex.inference.models.runners import onnxruntime_runner as runner

        core = ov.Core()
        call = runner.ONNXRuntimeRunner.__call__

        def routed(self: Any, x: Any = None, **kw: Any) -> Any:
            arr = x[0] if isinstance(x, list) else x
            shape = tuple(arr.shape)
            if not ((shape[2], shape[3]) == (48, 320) or shape[2] >= 600):
                return call(self, x, **kw)
            compiled = self.__dict__.setdefault("_bench_ov", {})
            if shape not in compiled:
                t = time.perf_counter()
                model = core.read_model(str(self._get_model_path()))
                model.reshape(list(shape))
                compiled[shape] = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "bf16",
                                                                    "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
                stats["compile s"] += time.perf_counter() - t
            stats["openvino calls"] += 1
            out = compiled[shape].infer([np.ascontiguousarray(arr)])
            return [np.array(out[i]) for i in range(len(out))]

        runner.ONNXRuntimeRunner.__call__ = routed
    from ocr_inbox.ocr import engine

    eng = engine.create(settings_for(DEFAULTS, work / "cache"))  # type: ignore[arg-type]
    pages = load_pages()
    pred = work / f"pred-{mode}"
    passes = []
    for rnd in range(2):
        t = time.perf_counter()
        for rel, imgs in pages:
            text = "\n".join(ln.text for im in imgs for ln in eng.recognise(im))  # type: ignore[arg-type]
            if rnd == 0:
                (pred / f"{rel}.txt").parent.mkdir(parents=True, exist_ok=True)
                (pred / f"{rel}.txt").write_text(text, encoding="utf-8")
        passes.append(time.perf_counter() - t)
    rows = parse_score(score(pred))
    sets = ", ".join(f"{k} {v[0]:.3f}" for k, v in rows.items() if k != "ALL")
    print(f"- {mode}: passes {passes[0]:.2f} s / {passes[1]:.2f} s for {len(pages)} images; char F1 {rows['ALL'][0]:.4f}, "
          f"word F1 {rows['ALL'][1]:.4f} ({sets}); {stats}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="ops,openvino,corpus")
    ap.add_argument("--sample", type=int, default=150, help="line crops timed per model")
    ap.add_argument("--corpus-child", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if args.corpus_child:
        corpus_child(args.corpus_child, args.work)
        return
    parts = args.parts.split(",")
    print(f"# machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        work = Path(tmp)
        if {"ops", "openvino"} & set(parts):
            inputs = capture(work / "cache")
            print(f"captured: {len(inputs['det'])} page inputs, {len(inputs['rec'])} line crops")
            if "ops" in parts:
                ops(inputs, args.sample, work)
            if "openvino" in parts:
                openvino_calls(inputs, args.sample)
        if "corpus" in parts:
            print(f"\n## The defaults ({DEFAULTS}) over the corpus, one process, 2 passes\n")
            corpus(work)


if __name__ == "__main__":
    main()
