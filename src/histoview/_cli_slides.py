"""The whole-slide parts of the ``histoview`` command line: ``explain`` on a slide, tile by
tile (:func:`histoview.explain.slide_run.explain_slide`), and ``phantom-slide``."""

from __future__ import annotations


def slide_methods(args) -> list[str]:
    from histoview.explain.methods import get_method, list_methods

    if args.method != "all":
        return [args.method]
    return [m for m in list_methods(run_all=True) if get_method(m).slide is not None]


def explain_as_slide(args) -> bool:
    """``--whole-slide`` or ``--region``, or an image too big at the model's pixel size to
    explain in one piece (:func:`histoview.explain.slide_run.needs_slide_engine`)."""
    from histoview.explain.slide_run import needs_slide_engine
    from histoview.io.errors import ImageReadError

    if args.whole_slide or args.region is not None:
        return True
    try:
        return needs_slide_engine(
            args.image,
            slide_methods(args),
            model=args.model,
            checkpoint=args.checkpoint,
            pixel_size_um=args.pixel_size,
        )
    except (ImageReadError, ValueError, OSError):
        return False  # the one-piece path reports the problem, checkpoint first


def cmd_explain_slide(args) -> int:
    """``histoview explain`` tile by tile (:func:`histoview.explain.slide_run.explain_slide`);
    ``--method all``: every method with a slide processor and weights, one tissue mask."""
    from histoview.models.checkpoint import CheckpointError

    methods = slide_methods(args)
    if not methods:
        raise ValueError(f"{args.image}: no method runs on whole slides here")
    amp = {"auto": None, "on": True, "off": False}[args.mixed_precision]
    tissue = None  # detected once, written once, for every method
    for method in methods:
        print(f"{method}: explaining {args.image} tile by tile", flush=True)
        try:
            result = explain_one_slide(args, method, amp, tissue)
        except CheckpointError as exc:
            if args.method != "all":
                raise
            print(f"{method}: skipped ({exc})", flush=True)
            continue
        tissue = result.tissue
        s = result.summary
        print(
            f"{method}: {s['tiles_done']} of {s['tiles_total']} tiles, {s['tiles_skipped']} "
            f"skipped, {s['time_s']:.1f} s; pixel size {s['pixel_size_um']:.4g} um/px "
            f"({s['pixel_size_source']}), slide {s['slide_pixel_size']}"
        )
        for tile in s["skipped_tiles"]:
            print(f"{method}: skipped tile {tile['index']}: {tile['reason']}")
        if "prediction" in s:
            print(f"{method}: slide prediction {s['prediction']}")
        cache = s.get("feature_cache") or {}
        if cache.get("used"):
            done = (
                "read from"
                if cache.get("hit")
                else "stored in"
                if cache.get("stored")
                else "not stored in"
            )
            print(f"{method}: patch embeddings {done} the feature cache {cache['root']}"
                  + (f" ({cache['error']})" if cache.get("error") else ""))  # fmt: skip
        for path in result.outputs.values():
            print(f"wrote {path}")
    return 0


def explain_one_slide(args, method: str, amp, tissue):
    from histoview.explain.slide_run import explain_slide

    return explain_slide(
        args.image,
        method,
        out_dir=args.out,
        checkpoint=None if args.method == "all" else args.checkpoint,
        model=None if args.method == "all" else args.model,
        pixel_size_um=args.pixel_size,
        region=args.region,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=amp,
        target_class=args.target_class,
        options={"importance": args.importance} if args.importance else None,
        progress=_SlideProgress(method),
        resume=not args.restart,
        overwrite=args.overwrite,
        tissue=tissue,
        write_tissue=tissue is None,
        report=lambda line: print(f"{method}: {line}", flush=True),
        feature_cache="off" if args.no_feature_cache else args.feature_cache,
    )


class _SlideProgress:
    """Prints tiles done / total and the time left, at most every 2 s (and the last batch)."""

    def __init__(self, method: str, every_s: float = 2.0):
        self.method, self.every_s, self.last = method, every_s, None

    def __call__(self, event: dict) -> None:
        import time

        now = time.monotonic()
        final = event["done"] + event["skipped"] >= event["total"]
        if not final and self.last is not None and now - self.last < self.every_s:
            return
        self.last = now
        left = event["remaining_s"]
        left = f", about {left:.0f} s left" if left is not None and not final else ""
        print(
            f"{self.method}: tiles {event['done']}/{event['total']} "
            f"({event['skipped']} skipped), {event['elapsed_s']:.0f} s{left}",
            flush=True,
        )


def cmd_phantom_slide(args) -> int:
    from histoview.io.files import check_writable_dir
    from histoview.preprocessing.phantom_slide import write_phantom_slide

    check_writable_dir(args.out.parent)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            print(f"rendered {done}/{total} bands", flush=True)

    slide = write_phantom_slide(
        args.out,
        size=args.size,
        seed=args.seed,
        pixel_size_um=args.pixel_size,
        compression=args.compression,
        overwrite=args.overwrite,
        progress=progress,
    )
    for path in (slide.path, slide.labels_path, slide.lesions_path, slide.info_path):
        print(f"wrote {path}")
    kinds = ", ".join(f"{les['kind']} {les['diameter_um'] / 1000:.2g} mm" for les in slide.lesions)
    print(f"{len(slide.lesions)} lesions ({kinds or 'none'}); {slide.seconds:.0f} s")
    return 0
