"""``botnet export``: ONNX / TorchScript / torch.export files with dynamic batch and image size."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ._options import nonneg_int_arg, positive_int_arg

    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a torch.export program (dynamic batch and image size)",
        description="Export a model (a trained checkpoint, or a registered architecture with random weights) "
        "for deployment. Every format takes any batch size and image size; the result is checked against "
        "PyTorch at two sizes other than the export size.",
    )
    parser.add_argument("--model", help="registered model name (needed without --checkpoint)")
    parser.add_argument("--checkpoint", help="a .safetensors/.pt checkpoint or a training run directory")
    parser.add_argument("--num-classes", type=nonneg_int_arg, help="classifier outputs (default: the checkpoint's, else 1000)")
    parser.add_argument("--in-chans", type=positive_int_arg, help="input channels (default: the checkpoint's, else 3)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript", "exported"))
    parser.add_argument("--out", required=True, help="output file (.onnx, .pt for torchscript, .pt2 for exported)")
    parser.add_argument("--img-size", nargs=2, type=positive_int_arg, metavar=("H", "W"),
                        help="example size used while exporting (default: the model's reference size)")
    parser.add_argument("--opset", type=positive_int_arg, default=18, help="ONNX opset (>= 17, default 18)")
    parser.add_argument("--no-check", action="store_true", help="skip running the exported file against PyTorch")
    parser.set_defaults(run=run)


def _build_model(args: argparse.Namespace):  # -> (BoTNet, meta, source description)
    from ..checkpoint import load_model, model_meta
    from ..models import create_model
    from . import CommandError

    if args.checkpoint:
        model, meta = load_model(args.checkpoint)
        if args.model and args.model != model.name:
            raise CommandError(f"--model {args.model} does not match the checkpoint's model {model.name}")
        for option, value, have in (("--num-classes", args.num_classes, model.num_classes),
                                    ("--in-chans", args.in_chans, model.in_chans)):
            if value is not None and value != have:
                raise CommandError(f"{option} {value} does not match the checkpoint's {have}")
        return model, meta, args.checkpoint
    if not args.model:
        raise CommandError("give --model NAME (random weights) or --checkpoint CKPT")
    model = create_model(args.model, num_classes=1000 if args.num_classes is None else args.num_classes,
                         in_chans=3 if args.in_chans is None else args.in_chans).eval()
    return model, model_meta(model), "random weights (no --checkpoint)"


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import os
    import time

    from rich.console import Console
    from rich.table import Table

    from ..export import CHECK_BATCH, SUFFIXES, check_sizes, compare_exported, export_model
    from . import CommandError

    from ..runtime.checks import check_out_file

    console = Console(stderr=True)
    check_out_file(args.out)
    if args.format == "onnx":
        missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:
            raise CommandError(f"ONNX export needs {', '.join(missing)}: pip install 'botnet[onnx]'")
    model, meta, source = _build_model(args)
    img_size = tuple(args.img_size) if args.img_size else None
    suffix = SUFFIXES[args.format]
    if not args.out.endswith(suffix):
        console.print(f"[yellow]note:[/] {args.format} files usually end in {suffix}")

    start = time.perf_counter()
    with console.status(f"exporting {model.name} ({source}) as {args.format}..."):
        path = export_model(model, args.out, args.format, img_size=img_size, opset=args.opset, meta=meta)
    seconds = time.perf_counter() - start

    Console().print(f"wrote {path} ({args.format}, {os.path.getsize(path) / 2**20:.1f} MiB) in {seconds:.1f} s; "
                    f"weights: {source}")
    if args.no_check:
        return 0
    if args.format == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        console.print("[yellow]onnxruntime is not installed: the ONNX file was not checked[/]")
        return 0
    sizes = check_sizes(model, img_size)
    with console.status("checking the exported model at other sizes..."):
        results = compare_exported(model, path, args.format, sizes)
    table = Table(title=f"{args.format} vs PyTorch at sizes other than the export size")
    table.add_column("input N x C x H x W", justify="right")
    table.add_column("max |exported - PyTorch|", justify="right")
    table.add_column("max |logit|", justify="right")
    for result in results:
        height, width = result["size"]
        table.add_row(f"{CHECK_BATCH} x {model.in_chans} x {height} x {width}",
                      f"{result['max_abs_diff']:.2e}", f"{result['max_abs_logit']:.2e}")
    Console().print(table)
    bad = [r for r in results if r["max_abs_diff"] > 1e-4 + 1e-3 * r["max_abs_logit"]]
    if bad:
        raise CommandError(f"the exported model's logits differ from PyTorch's by {bad[0]['max_abs_diff']:.2e} at "
                           f"{bad[0]['size']} (tolerance 1e-4 + 1e-3 * max |logit|); please report this")
    return 0
