"""The evaluation parts of the ``histoview`` command line: ``evaluate`` and ``reproduce``."""

from __future__ import annotations


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
