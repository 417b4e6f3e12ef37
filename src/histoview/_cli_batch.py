"""``histoview batch``: explain many slides, one Dask task each (:mod:`histoview.batch`).

``histoview batch INPUTS... --method M [--method M2] --out DIR`` runs on an embedded
LocalCluster (one worker per GPU, else 2; ``--workers N``) or, with ``--scheduler ADDRESS``,
on an existing Dask cluster. Exit status 0 when every slide is done (or was done before),
1 when some failed (the summary says why), 2 on a bad command (one line naming the problem).
"""

from __future__ import annotations

from pathlib import Path


def add_batch_parser(sub) -> None:
    """Register ``histoview batch`` on the subcommand parsers ``sub``."""
    from histoview.explain.methods import get_method, list_methods

    slide_methods = [m for m in list_methods() if get_method(m).slide is not None]
    p = sub.add_parser(
        "batch",
        help="explain many slides (files, folders, a CSV list) as Dask tasks, with a summary table",
        description="Each slide is one Dask task: on an embedded LocalCluster (one worker per "
        "GPU, else 2 CPU workers) or an existing scheduler (--scheduler). Outputs go to "
        "OUT/<slide>/ whole or not at all; OUT/summary.csv and summary.json grow as slides "
        "finish; running the same command again skips the slides done with the same settings "
        "and redoes the failed ones. Research use only, not for diagnosis.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="slide files, folders (searched recursively) or CSV list files "
        "(a 'path' column, optional 'label'; relative paths from the CSV's folder)",
    )
    p.add_argument(
        "--method",
        dest="methods",
        action="append",
        required=True,
        choices=slide_methods,
        help="explanation method (repeat for several)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (shared by all workers)")
    where = p.add_argument_group("where it runs")
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        help="workers of the embedded cluster (default: one per GPU, else 2)",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="an existing Dask scheduler (e.g. tcp://host:8786) instead of the embedded cluster",
    )
    where.add_argument(
        "--retries",
        type=int,
        default=2,
        help="reruns of a slide whose worker died (default 2)",
    )
    how = p.add_argument_group("each slide")
    how.add_argument("--model", default=None, help="registry model name")
    how.add_argument("--checkpoint", type=Path, default=None, help="a .safetensors checkpoint")
    how.add_argument(
        "--class", dest="target_class", default=None, help="class to explain (name or index)"
    )
    how.add_argument(
        "--pixel-size", type=float, default=None, help="level-0 micrometres per pixel (override)"
    )
    how.add_argument(
        "--region", default=None, help="x,y,w,h of level 0 in pixels, or micrometres with 'um'"
    )
    how.add_argument(
        "--device", default=None, help="cpu, cuda (default: each worker's GPU when present)"
    )
    how.add_argument("--batch-size", type=int, default=16, help="tiles per batch (default 16)")
    how.add_argument(
        "--tile-workers",
        type=int,
        default=None,
        help="tile-reading processes per slide (default: 2 on a GPU, 0 on the CPU)",
    )
    cache = how.add_mutually_exclusive_group()
    cache.add_argument(
        "--feature-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="A-MIL patch-embedding cache (default: the user cache folder; on a cluster, "
        "shared storage)",
    )
    cache.add_argument(
        "--no-feature-cache", action="store_true", help="do not read or write cached features"
    )
    p.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    from histoview import RESEARCH_NOTICE
    from histoview.batch.keys import BatchSettings
    from histoview.batch.run import run_batch

    if args.workers is not None and args.scheduler:
        raise ValueError("--workers and --scheduler: the scheduler's cluster has its own workers")
    feature_cache = "off" if args.no_feature_cache else args.feature_cache
    settings = BatchSettings(
        methods=tuple(dict.fromkeys(args.methods)),
        model=args.model,
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
        pixel_size_um=args.pixel_size,
        region=args.region,
        target_class=args.target_class,
        device=args.device,
        batch_size=args.batch_size,
        tile_workers=args.tile_workers,
        feature_cache=str(feature_cache) if feature_cache is not None else None,
    )
    result = run_batch(
        args.inputs,
        settings,
        args.out,
        workers=args.workers,
        scheduler=args.scheduler,
        retries=args.retries,
    )
    c = result.counts
    print(
        f"{c['done']} done, {c['skipped']} skipped (done before), {c['failed']} failed; "
        f"{result.seconds:.1f} s"
    )
    for row in result.rows:
        if row["status"] == "failed":
            print(f"failed: {row['slide']}: {row['error']}")
    for path in result.summary_files:
        print(f"wrote {path}")
    print(RESEARCH_NOTICE)
    return 1 if c["failed"] else 0
