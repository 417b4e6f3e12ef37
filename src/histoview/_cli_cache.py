"""``histoview cache info|clear``: the feature cache (:mod:`histoview.explain.feature_cache`)."""

from __future__ import annotations

from pathlib import Path


def add_cache_parser(sub) -> None:
    """Register ``histoview cache info [--dir D]`` and ``histoview cache clear [--dir D]
    [--slide HASH_PREFIX]`` on the subcommand parsers ``sub``."""
    p = sub.add_parser(
        "cache", help="the on-disk cache of patch embeddings (A-MIL on whole slides)"
    )
    csub = p.add_subparsers(dest="cache_command", required=True)
    dir_help = "the cache folder (default: $HISTOVIEW_CACHE_DIR/features or the user cache)"
    info = csub.add_parser("info", help="entries, slides and bytes in the cache")
    info.add_argument("--dir", type=Path, default=None, help=dir_help)
    info.add_argument("--list", action="store_true", help="one line per entry")
    info.set_defaults(func=cmd_cache_info)
    clear = csub.add_parser("clear", help="remove cached embeddings")
    clear.add_argument("--dir", type=Path, default=None, help=dir_help)
    clear.add_argument(
        "--slide",
        default=None,
        metavar="HASH_PREFIX",
        help="only the entries of slides whose content hash starts with this "
        "(`histoview cache info --list` shows them)",
    )
    clear.set_defaults(func=cmd_cache_clear)


def _cache(args):
    from histoview.explain.feature_cache import FeatureCache

    return FeatureCache(args.dir)


def cmd_cache_info(args) -> int:
    cache = _cache(args)
    info = cache.info()
    print(
        f"feature cache {info['root']}: {info['entries']} entries of {info['slides']} slides, "
        f"{_size(info['bytes'])} of {_size(info['max_bytes'])}"
    )
    if getattr(args, "list", False):
        for e in sorted(cache.list_entries(), key=lambda e: -e["used"]):
            print(
                f"  {e['slide'][:16]}  {e['patches']} patches x {e['features']}  "
                f"{_size(e['bytes'])}  created {e['created']}  {e['key']}"
            )
    return 0


def cmd_cache_clear(args) -> int:
    cache = _cache(args)
    removed = cache.clear(slide=args.slide)
    which = f" of slides {args.slide}*" if args.slide else ""
    print(f"feature cache {cache.root}: removed {removed} entries{which}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
