"""The training parts of the ``histoview`` command line: ``train``, ``evaluate`` and ``reproduce``."""

from __future__ import annotations

from pathlib import Path


def add_train_parser(sub, *, progress) -> None:
    """Register ``histoview train`` on the subcommand parsers ``sub``."""
    p = sub.add_parser(
        "train", help="train a model from a YAML or TOML config, or a shipped recipe"
    )
    p.add_argument(
        "config",
        type=Path,
        help="a .yaml/.toml config, or the name of a shipped recipe (e.g. amil-phantom; "
        "the repository's training/ folder holds them)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (overrides the config)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument(
        "--restart", action="store_true", help="ignore an existing checkpoint and start afresh"
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes with DistributedDataParallel (NCCL, one per GPU, when "
        "every process has a GPU, else Gloo on the CPU); each process takes batch_size "
        "samples a step, so a step sees N x batch_size (the learning rate is not scaled). "
        "Under torchrun leave it out: the processes are torchrun's",
    )
    p.set_defaults(func=lambda args: cmd_train(args, progress=progress))


def cmd_train(args, *, progress) -> int:
    from histoview.io.files import check_writable_dir
    from histoview.training.config import check_processes, load_config

    config = load_config(args.config)  # ConfigError: one line naming the file and the key
    if args.out:
        config["output_dir"] = str(args.out)
    check_writable_dir(config["output_dir"])  # relative: to this folder, as the run resolves it
    if args.epochs is not None:
        config.setdefault("train", {})["epochs"] = args.epochs
    run = {"resume": not args.restart, "progress": progress, "source": str(args.config)}
    nproc = getattr(args, "nproc", 1)
    check_processes(config, nproc, str(args.config))
    import os

    if nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from histoview.training import launch  # (imports torch)

        if nproc > 1:
            result = launch.train_processes(config, nproc, **run)
        else:  # one process of a run torchrun started: only rank 0 prints
            result = launch.train_this_process(config, **run)
            if int(os.environ.get("RANK", "0")) != 0:
                return 0
    else:
        from histoview.training.run import train_from_config

        result = train_from_config(config, **run)
    print(f"checkpoint: {result['checkpoint']}")
    print(f"report:     {result['report']}")
    return 0


def cmd_evaluate(args, *, progress) -> int:
    from histoview.io.files import check_writable_dir
    from histoview.training.evaluate import evaluate_checkpoint

    check_writable_dir(args.out)
    data: str | dict = str(args.data)
    if args.task or args.magnification:
        data = {
            "root": str(args.data),
            **({"task": args.task} if args.task else {}),
            **({"magnification": args.magnification} if args.magnification else {}),
        }
    result = evaluate_checkpoint(
        args.checkpoint,
        data,
        out_dir=args.out,
        split=args.split,
        tta=args.tta,
        device=args.device,
        progress=progress,
    )
    overall = result["overall"]
    for key in (
        "accuracy",
        "balanced_accuracy",
        "precision_macro",
        "recall_macro",
        "specificity",
        "f1_macro",
        "roc_auc",
        "pr_auc",
        "iba",
        "gmean",
    ):
        if key in overall and isinstance(overall[key], (int, float)):
            print(f"{key:20s} {overall[key]:.4f}")
    for path in result["files"].values():
        print(f"wrote {path}")
    return 0


def cmd_reproduce(args, *, progress) -> int:
    from histoview.training import reproduce

    if args.list or args.experiment is None:
        print(reproduce.list_experiments())
        return 0
    if args.describe:
        print(reproduce.describe_experiment(args.experiment))
        return 0
    if args.data is None:
        raise ValueError("give --data PATH (your copy of the experiment's dataset)")
    from histoview.io.files import check_writable_dir

    check_writable_dir(args.out)
    from histoview.io.files import check_writable_dir

    check_writable_dir(args.out)
    rows = args.rows.split(",") if args.rows else None
    results = reproduce.run_experiment(
        args.experiment,
        args.data,
        out_dir=args.out,
        split_by=args.split_by,
        epochs=args.epochs,
        max_images=args.max_images,
        rows=rows,
        progress=progress,
        device=args.device,
    )
    print(reproduce.format_table(results))
    return 0
