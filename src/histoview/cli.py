"""The ``histoview`` command line.

Subcommands: ``info`` (levels, shapes, dtype, pixel size), ``demo`` (napari
with the phantom and explanations, or a screenshot), ``train`` (fit a model
from a YAML/TOML config), ``explain`` (write an explanation's JSON and map),
``export`` (GeoJSON/CSV annotations), ``evaluate`` (metrics and figures of a
checkpoint on a dataset) and
``reproduce`` (the experiment table of a paper behind a method, on the user's data),
``batch`` (many slides as Dask tasks, with a summary table), ``cache`` (the feature cache);
``phantom-slide`` writes a synthetic whole slide with its lesions' ground truth.
Heavy libraries are imported by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from histoview import RESEARCH_NOTICE, __version__


def _cmd_info(args) -> int:
    from histoview.io import open_image

    with open_image(args.image, pixel_size_um=args.pixel_size, backend=args.backend) as src:
        info = src.describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    mpp = info["pixel_size_um"]
    print(f"file:        {info['path']}")
    print(f"format:      {info['format']}")
    print(f"backend:     {info['backend']}")
    print(f"dtype:       {info['dtype']}")
    yx, origin = info["pixel_size_yx"], info["pixel_size_origin"]
    where = f"{info['pixel_size_source']}" + (f": {origin}" if origin else "")
    if mpp:
        size = f"{mpp:.4g} um/px ({where})"
    elif yx:
        size = f"{yx[0]:.4g} um (y) x {yx[1]:.4g} um (x) per pixel ({where}); not square: not analysable"
    else:
        size = "unknown (explanations estimate it from the nuclei; or give --pixel-size)"
    print(f"pixel size:  {size}")
    power = info["objective_power"]
    print(f"objective:   {f'{power:g}X' if power else 'not stated in the file'}")
    if info["pixel_size_note"]:
        print(f"note:        {info['pixel_size_note']}")
    if info.get("image_note"):
        print(f"image:       {info['image_note']}")
    print(f"levels:      {len(info['levels'])}")
    for i, lv in enumerate(info["levels"]):
        shape = " x ".join(map(str, lv["shape"]))
        px = f", {lv['pixel_size_um']:.4g} um/px" if lv.get("pixel_size_um") else ""
        print(f"  level {i}: {shape}  (downsample {lv['downsample']:g}{px})")
    return 0


def _cmd_demo(args) -> int:
    from histoview.viewer.demo import run_demo

    path = run_demo(
        screenshot=args.screenshot,
        label=args.label,
        seed=args.seed,
        explanations=not args.no_explanations,
        view=args.view,
    )
    if path is not None:
        print(f"wrote {path}")
    return 0


def _print_progress(event: dict) -> None:
    kind = event.get("event")
    if kind == "epoch_end":
        metrics = " ".join(
            f"{k}={v:.4f}"
            for k, v in event.get("val_metrics", {}).items()
            if isinstance(v, float)
            and k in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc")
        )
        label = f"  [{event['split_label']}]" if event.get("split_label") else ""
        print(
            f"epoch {event['epoch']}/{event['epochs']}: train loss {event['train_loss']:.4f}  val {metrics}{label}",
            flush=True,
        )
    elif kind in (
        "message",
        "resumed",
        "start",
        "cancelled",
        "done",
        "row_start",
        "row_skipped",
        "row_done",
    ):
        print(event.get("text", event), flush=True)


def _cmd_explain(args) -> int:
    from histoview.explain.run import explain_file
    from histoview.io.files import check_writable_dir

    check_writable_dir(args.out)
    from histoview._cli_slides import cmd_explain_slide, explain_as_slide

    if explain_as_slide(args):
        return cmd_explain_slide(args)
    written = explain_file(
        args.image,
        method=args.method,
        model=args.model,
        checkpoint=args.checkpoint,
        out_dir=args.out,
        target_class=args.target_class,
        importance=args.importance,
        pixel_size_um=args.pixel_size,
        overwrite=args.overwrite,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_evaluate(args) -> int:
    from histoview._cli_training import cmd_evaluate

    return cmd_evaluate(args, progress=_print_progress)


def _cmd_reproduce(args) -> int:
    from histoview._cli_training import cmd_reproduce

    return cmd_reproduce(args, progress=_print_progress)


def _cmd_export(args) -> int:
    from histoview.explain.export import export_csv, export_geojson
    from histoview.explain.run import explain_path
    from histoview.io.files import check_writable_dir, output_stem

    check_writable_dir(args.out)
    _, explanations, _ = explain_path(
        args.image,
        (args.method,),
        model=args.model,
        checkpoint=args.checkpoint,
        target_class=args.target_class,
        pixel_size_um=args.pixel_size,
    )
    stem = output_stem(args.image)
    args.out.mkdir(parents=True, exist_ok=True)
    for expl in explanations:
        base = args.out / f"{stem}.{expl.method}"
        if args.format in ("geojson", "both"):
            path = export_geojson(
                expl,
                base.with_name(base.name + ".geojson"),
                threshold=args.threshold,
                overwrite=args.overwrite,
                numbered=True,
            )
            print(f"wrote {path}")
        if args.format in ("csv", "both"):
            path = export_csv(
                expl,
                base.with_name(base.name + ".csv"),
                threshold=args.threshold,
                overwrite=args.overwrite,
                numbered=True,
            )
            print(f"wrote {path}")
    return 0


def _phantom_slide(args) -> int:
    from histoview._cli_slides import cmd_phantom_slide

    return cmd_phantom_slide(args)


def build_parser() -> argparse.ArgumentParser:
    from histoview.explain.methods import get_method, list_methods

    method_names = list_methods()
    graph_importance = [v for v in get_method("graph").options["importance"] if v != "auto"]
    parser = argparse.ArgumentParser(
        prog="histoview",
        description=f"See why a model calls breast tissue benign or malignant. {RESEARCH_NOTICE}",
    )
    parser.add_argument("--version", action="version", version=f"histoview {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "info",
        help="print an image's reading backend, pyramid levels (shape, downsample, pixel size), "
        "dtype, pixel size and its source, objective power",
    )
    p.add_argument("image", type=Path)
    p.add_argument("--pixel-size", type=float, default=None, help="override micrometres per pixel")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--backend",
        default=None,
        help="force the reading library: tifffile, openslide, wsidicom or pillow (default: picked "
        "by format; also HISTOVIEW_IMAGE_BACKEND)",
    )
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="open napari with the phantom and its explanations")
    p.add_argument(
        "--screenshot", type=Path, default=None, help="render off-screen and write this PNG"
    )
    p.add_argument("--label", default="invasive", choices=["benign", "in_situ", "invasive"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-explanations", action="store_true", help="show the phantom only")
    p.add_argument(
        "--view",
        default="compare",
        choices=["compare", "stacked"],
        help="compare: every method side by side with agreement and faithfulness; "
        "stacked: the overlays on one view",
    )
    p.set_defaults(func=_cmd_demo)

    from histoview._cli_training import add_train_parser

    add_train_parser(sub, progress=_print_progress)

    from histoview._cli_batch import add_batch_parser
    from histoview._cli_cache import add_cache_parser

    add_batch_parser(sub)
    add_cache_parser(sub)

    def explanation_args(p, methods, method_help):
        """The arguments ``explain`` and ``export`` share: image, method, weights, outputs."""
        p.add_argument("image", type=Path)
        p.add_argument("--method", required=True, choices=methods, help=method_help)
        p.add_argument(
            "--model", default=None, help="registry model name (default: the method's demo model)"
        )
        p.add_argument(
            "--checkpoint",
            type=Path,
            default=None,
            help="a .safetensors checkpoint (default: the bundled synthetic demo weights)",
        )
        p.add_argument(
            "--class", dest="target_class", default=None, help="class to explain (name or index)"
        )
        p.add_argument(
            "--pixel-size", type=float, default=None, help="override micrometres per pixel"
        )
        p.add_argument("--out", type=Path, required=True, help="output folder")
        p.add_argument(
            "--overwrite", action="store_true", help="replace existing outputs instead of numbering"
        )

    p = sub.add_parser("explain", help="explain a model's decision on one image")
    explanation_args(
        p,
        [*method_names, "all"],
        "explanation method; 'all' runs every method with weights and writes a comparison",
    )
    p.add_argument(
        "--importance",
        default=None,
        choices=list(graph_importance),
        help="graph models: node importance method",
    )
    slide = p.add_argument_group(
        "whole slides",
        "tile by tile at the model's pixel size; used when the image at that pixel size does not "
        "fit in one piece, or with --whole-slide / --region",
    )
    slide.add_argument(
        "--whole-slide", action="store_true", help="explain tile by tile whatever the image's size"
    )
    slide.add_argument(
        "--region",
        default=None,
        help="x,y,w,h of level 0 in pixels, or in micrometres with a 'um' suffix "
        "(e.g. 1000,2000,500,500um)",
    )
    slide.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)"
    )
    slide.add_argument("--batch-size", type=int, default=16, help="tiles per batch (default 16)")
    slide.add_argument(
        "--workers", type=int, default=2, help="processes reading tiles (default 2; 0: none)"
    )
    slide.add_argument(
        "--mixed-precision",
        default="auto",
        choices=["auto", "on", "off"],
        help="autocast (auto: on with CUDA, off on the CPU)",
    )
    slide.add_argument(
        "--restart", action="store_true", help="ignore the working store of an earlier run"
    )
    cache = slide.add_mutually_exclusive_group()
    cache.add_argument(
        "--feature-cache", type=Path, default=None, metavar="DIR",
        help="A-MIL patch-embedding cache (default: the user cache folder)",
    )  # fmt: skip
    cache.add_argument(
        "--no-feature-cache", action="store_true", help="do not read or write cached features"
    )
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser(
        "export", help="export an explanation as GeoJSON (QuPath) and/or CSV annotations"
    )
    explanation_args(p, method_names, "explanation method")
    p.add_argument("--format", default="both", choices=["geojson", "csv", "both"])
    p.add_argument(
        "--threshold", type=float, default=None, help="dense maps: region threshold (default: Otsu)"
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "evaluate", help="evaluate a checkpoint on a dataset: metrics, confusion matrix, ROC/PR"
    )
    p.add_argument("checkpoint", help="a .safetensors checkpoint or a model-library name")
    p.add_argument(
        "data", type=Path, help="dataset folder (BreakHis, BACH or one folder per class)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "all"],
        help="test: the checkpoint's own test split (same data); all: every image",
    )
    p.add_argument("--task", default=None, help="dataset task, e.g. binary or subtype")
    p.add_argument("--magnification", default=None, help="BreakHis magnification, e.g. 100")
    p.add_argument("--tta", action="store_true", help="8-fold flip/rotation test-time augmentation")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "reproduce",
        help="run the experiment table of a paper behind a method (docs/citations.md) on your copy of the data",
    )
    p.add_argument("experiment", nargs="?", default=None)
    p.add_argument("--list", action="store_true", help="list the available experiments")
    p.add_argument("--describe", action="store_true", help="print the experiment's protocol")
    p.add_argument("--data", type=Path, default=None, help="your copy of the dataset")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="output folder")
    p.add_argument("--epochs", type=int, default=None, help="override epochs (reduced runs)")
    p.add_argument("--max-images", type=int, default=None, help="images per class (reduced runs)")
    p.add_argument("--rows", default=None, help="comma-separated row keys to run")
    p.add_argument(
        "--split-by",
        default="patient",
        choices=["patient", "image"],
        help="image-level splits leak patients (offered only to match the papers)",
    )
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "phantom-slide",
        help="write a synthetic whole slide (pyramidal TIFF) with its lesions' ground truth",
    )
    p.add_argument("out", type=Path, help="the slide's .tif; the ground truth goes beside it")
    p.add_argument("--size", type=int, default=50000, help="side in pixels (default 50000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pixel-size", type=float, default=0.25, help="level-0 um per pixel (default 0.25, 40X)"
    )
    p.add_argument(
        "--compression",
        default="zlib",
        choices=["zlib", "jpeg"],
        help="tile compression: zlib (lossless, default) or jpeg (5x smaller, lossy)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=_phantom_slide)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        # ImageReadError, CheckpointError and OutputDirError are ValueErrors that name the
        # file; an OSError (a full disk, no permission) names it through its filename.
        print(f"histoview {args.command}: error: {_error_line(exc)}", file=sys.stderr)
        return 2


def _error_line(exc: BaseException) -> str:
    """The user's one line for ``exc``: no "[Errno 28]", no multi-line library text."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.errno is not None and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
