"""Grad-CAM cost relative to one forward pass, on a full BreakHis-size image (460 x 700).

For each model: parameter count, CPU inference time per 700 x 460 image, and
Grad-CAM time / forward time (median over interleaved runs after warm-up; the
image is fed at full size, not resized). Target: ResNet50 ratio <= 1.3.
"cpu ratio" is the same ratio in process CPU time, which other processes on a
shared machine disturb less than wall time.

Run: ``python benchmarks/bench_gradcam.py [--threads N] [--runs N] [--models a,b]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

MODELS = (
    "resnet50",
    "resnet18",
    "vgg16",
    "dalaresnet50",
    "cspresnet50_fpn_se",
    "rmcg",
    "customnet",
)
BREAKHIS_HW = (460, 700)


def bench(name: str, runs: int, device: str) -> dict:
    import torch

    from histoview.explain.gradcam import GradCAM
    from histoview.models import create_model

    torch.manual_seed(0)
    model = create_model(name).eval().to(device)
    x = torch.randn(1, 3, *BREAKHIS_HW, device=device)
    cam = GradCAM(model)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            model(x)
        sync()

    fmap = []

    def gradcam():
        hooked = cam.forward(x)
        cam.compute(hooked)  # == cam(x)
        sync()
        fmap[:] = hooked.activation.shape[-2:]

    forward()  # warm-up (Grad-CAM runs the same kernels)
    fwd, gc, ratios, cpu_ratios = [], [], [], []
    for _ in range(runs):  # interleaved, so that load changes hit both alike
        t0, c0 = time.perf_counter(), time.process_time()
        forward()
        t1, c1 = time.perf_counter(), time.process_time()
        gradcam()
        t2, c2 = time.perf_counter(), time.process_time()
        fwd.append(t1 - t0)
        gc.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
        cpu_ratios.append((c2 - c1) / max(c1 - c0, 1e-9))
    return {
        "model": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "forward_ms": 1e3 * statistics.median(fwd),
        "gradcam_ms": 1e3 * statistics.median(gc),
        "ratio": statistics.median(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "feature_map": "x".join(map(str, fmap)),
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    import histoview.models.attention_cnns  # noqa: F401  (registration)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per model (ResNet50: +2)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"input 1 x 3 x {BREAKHIS_HW[0]} x {BREAKHIS_HW[1]} (BreakHis size, not resized)"
    )
    header = (
        f"{'model':<20} {'params':>8} {'fmap':>6} {'forward':>10} {'Grad-CAM':>10} "
        f"{'ratio':>6} {'cpu ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.models.split(","):
        r = bench(name, args.runs + (2 if name == "resnet50" else 0), args.device)
        rows.append(r)
        print(
            f"{r['model']:<20} {r['params_m']:>7.1f}M {r['feature_map']:>6} "
            f"{r['forward_ms']:>8.0f}ms {r['gradcam_ms']:>8.0f}ms {r['ratio']:>6.2f} "
            f"{r['cpu_ratio']:>9.2f}",
            flush=True,
        )
    ratios = {r["model"]: r["ratio"] for r in rows}
    if "resnet50" in ratios:
        ok = ratios["resnet50"] <= 1.3
        print(
            f"ResNet50 Grad-CAM / forward = {ratios['resnet50']:.2f} (target <= 1.3): "
            f"{'OK' if ok else 'ABOVE TARGET'}"
        )
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
