"""Streaming formats for ImageNet-style JPEG shards: webdataset vs litdata vs mosaicml-streaming vs HF datasets.

The same JPEGs (ImageNet-like, ~500x375, cut from real photographs, see
``common.photo_folder``) are packed in each library's own format, keeping each
file's original bytes (checked: every image read back is byte-identical to
its file), then read back in one process, one pass after a warm-up pass (the
page cache holds the files: this measures the library's own cost, not the
disk). Per format, in one run:

* ``pack_s``: writing the format from the file list (single process);
* ``read_raw``: samples/s reading (bytes, label) pairs, no decoding (and
  its inverse, the library's own cost per sample);
* ``read_decode``: samples/s with each JPEG decoded to a uint8 tensor by
  ``botnet.images.decode_image`` (the package's reader), no augmentation;
  the same decoder for all, so differences here are the reading cost plus
  noise. Formats are read in interleaved rounds (``--repeat``), best kept;
* ``deps``: packages and bytes the library adds on top of botnet's own
  dependencies (torch, torchvision, numpy, ...), from the installed
  distributions' RECORD files: what ``pip install`` really brings.

Libraries that are not installed are skipped and reported as such. They pull
in conflicting pins (mosaicml-streaming downgrades numpy), so run this in a
separate environment, e.g.::

    python3 -m venv /tmp/sb
    echo "$(python -c 'import site; print(site.getsitepackages()[0])')" > /tmp/sb/lib/python3.11/site-packages/base.pth
    /tmp/sb/bin/pip install webdataset litdata mosaicml-streaming datasets
    /tmp/sb/bin/python benchmarks/streaming_formats.py
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import common  # noqa: I001  (benchmarks/ is on sys.path when run as a script)

FORMATS = {"webdataset": "webdataset", "litdata": "litdata", "mosaicml-streaming": "streaming", "datasets": "datasets"}
SHARD_BYTES = 64 << 20  # each library's shard / chunk size limit


# --------------------------------------------------------------------------- each format: pack, read


def pack_webdataset(files: list[tuple[Path, int]], out: Path) -> None:
    import webdataset as wds

    out.mkdir(parents=True)
    # mtime as an int, as botnet's pack_folder writes it: webdataset's default (time.time(), a float) makes
    # tarfile add a PAX header to every entry (+1 KiB each, and ~40 % of the tar-reading time).
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxsize=SHARD_BYTES, maxcount=10**9, encoder=False,
                         verbose=0, mtime=0) as sink:
        for n, (path, label) in enumerate(files):
            sink.write({"__key__": f"{n:08d}", "jpg": path.read_bytes(), "cls": str(label).encode()})


def read_webdataset(out: Path) -> Iterator[tuple[bytes, int]]:
    import webdataset as wds

    urls = sorted(str(p) for p in out.glob("shard-*.tar"))
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        yield sample["jpg"], int(sample["cls"])


def _litdata_item(item: tuple[str, int]) -> dict:
    path, label = item
    return {"image": Path(path).read_bytes(), "label": label}


def pack_litdata(files: list[tuple[Path, int]], out: Path) -> None:
    import litdata

    litdata.optimize(fn=_litdata_item, inputs=[(str(p), label) for p, label in files], output_dir=str(out),
                     chunk_bytes=SHARD_BYTES, num_workers=1, mode="overwrite")


def read_litdata(out: Path) -> Iterator[tuple[bytes, int]]:
    import litdata

    for sample in litdata.StreamingDataset(str(out)):
        yield sample["image"], int(sample["label"])


def pack_mosaicml_streaming(files: list[tuple[Path, int]], out: Path) -> None:
    from streaming import MDSWriter

    with MDSWriter(out=str(out), columns={"image": "bytes", "label": "int"}, size_limit=SHARD_BYTES) as sink:
        for path, label in files:
            sink.write({"image": path.read_bytes(), "label": label})


def read_mosaicml_streaming(out: Path) -> Iterator[tuple[bytes, int]]:
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    dataset = StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    for sample in dataset:
        yield sample["image"], int(sample["label"])


def pack_datasets(files: list[tuple[Path, int]], out: Path) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})

    def rows():
        for path, label in files:
            yield {"image": {"bytes": path.read_bytes(), "path": None}, "label": label}

    table = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(out.parent / "hf_cache"))
    table.save_to_disk(str(out), max_shard_size=SHARD_BYTES)


def read_datasets(out: Path) -> Iterator[tuple[bytes, int]]:
    import datasets

    stream = datasets.load_from_disk(str(out)).to_iterable_dataset(num_shards=8)  # the streaming path
    for sample in stream:
        yield sample["image"]["bytes"], int(sample["label"])


PACK: dict[str, Callable] = {"webdataset": pack_webdataset, "litdata": pack_litdata,
                             "mosaicml-streaming": pack_mosaicml_streaming, "datasets": pack_datasets}
READ: dict[str, Callable] = {"webdataset": read_webdataset, "litdata": read_litdata,
                             "mosaicml-streaming": read_mosaicml_streaming, "datasets": read_datasets}


# --------------------------------------------------------------------------- dependency weight


def _requirements(name: str) -> list[str]:
    from packaging.requirements import Requirement

    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    names = []
    for text in requires:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    return names


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [_canonical(n) for n in _requirements(name)]
    return seen


def installed_bytes(name: str) -> int:
    files = metadata.distribution(name).files or []
    return sum(f.size or 0 for f in files)


def dependency_weight(package: str) -> dict:
    """Distributions (and their installed bytes) that ``package`` adds over botnet's own dependencies."""
    base = closure(["torch", "torchvision", "numpy", "rich", "safetensors", "matplotlib", "scikit-learn", "pyyaml"])
    added = sorted(closure([package]) - base)
    sizes = {name: installed_bytes(name) for name in added}
    return {"packages": len(added), "bytes": sum(sizes.values()), "names": added,
            "version": metadata.version(package)}


# --------------------------------------------------------------------------- measuring


def pack(fmt: str, files: list[tuple[Path, int]], work: Path) -> dict:
    """Write ``fmt``, then read it back once (warming the page cache) and compare every image's bytes."""
    out = work / fmt.replace("-", "_")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / "hf_cache", ignore_errors=True)
    start = time.perf_counter()
    PACK[fmt](files, out)
    pack_s = time.perf_counter() - start
    expected = sorted((hashlib.sha1(p.read_bytes()).hexdigest(), label) for p, label in files)
    got = sorted((hashlib.sha1(data).hexdigest(), label) for data, label in READ[fmt](out))
    return {"format": fmt, "pack_s": pack_s, "out": out,
            "bytes_on_disk": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
            "files_on_disk": sum(1 for p in out.rglob("*") if p.is_file()),
            "original_bytes_kept": got == expected, "samples_read": len(got)}  # fmt: skip


def read_rates(fmt: str, out: Path) -> tuple[float, float]:
    """(samples/s reading bytes and labels, samples/s reading and decoding each image) over one pass each."""
    from botnet.images import decode_image

    start = time.perf_counter()
    count = sum(1 for _ in READ[fmt](out))
    raw = count / (time.perf_counter() - start)
    start = time.perf_counter()
    count = sum(1 for data, _ in READ[fmt](out) if decode_image(data).shape[0] == 3)
    return raw, count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/botnet-bench/streaming"),
                        help="cache of the JPEG folder and the packed formats")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per format (best kept)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/streaming_formats.json)")
    args = parser.parse_args(argv)

    root = common.photo_folder(args.work / "folder", args.classes, args.per_class)
    files = [(path, label) for label, folder in enumerate(sorted(d for d in (root / "train").iterdir() if d.is_dir()))
             for path in sorted(folder.glob("*.JPEG"))]  # fmt: skip
    folder_bytes = sum(p.stat().st_size for p, _ in files)
    rows = []
    for fmt in args.formats:
        try:
            __import__(FORMATS[fmt])
        except ImportError as err:
            rows.append({"format": fmt, "error": f"not installed ({err})"})
            print(f"{fmt}: skipped, not installed", file=sys.stderr)
            continue
        try:
            row = pack(fmt, files, args.work)
        except Exception as err:  # a library that fails here is a finding, not a crash of the whole run
            row = {"format": fmt, "error": f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"}
        row["deps"] = dependency_weight(fmt)
        rows.append(row)
    # Reading: every format once per round, rounds interleaved (a slow phase of the shared machine hits all).
    ready = [row for row in rows if "out" in row]
    for _ in range(args.repeat):
        for row in ready:
            raw, decoded = read_rates(row["format"], row["out"])
            row.setdefault("rounds_raw_per_s", []).append(raw)
            row.setdefault("rounds_decode_per_s", []).append(decoded)
    for row in ready:
        out = row.pop("out")
        row["read_raw_per_s"], row["read_decode_per_s"] = max(row["rounds_raw_per_s"]), max(row["rounds_decode_per_s"])
        row["read_us_per_sample"] = 1e6 / row["read_raw_per_s"]
        print(f"{row['format']} ({out}): {json.dumps({k: v for k, v in row.items() if k != 'deps'})}", file=sys.stderr)
    info = common.machine_info(common.torch.device("cpu"))
    info["pillow"] = metadata.version("pillow")
    payload = {"machine": info, "config": {"images": len(files), "folder_bytes": folder_bytes,
                                           "shard_limit_bytes": SHARD_BYTES, "repeat": args.repeat},
               "results": rows}  # fmt: skip
    out = args.out or common.ROOT / "benchmarks" / "results" / "streaming_formats.json"
    common.write_json(out, payload)
    table = markdown(rows, len(files))
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def markdown(rows: list[dict], images: int) -> str:
    header = ["library", "version", "pack s", "read img/s (bytes only)", "µs / sample", "read img/s (+ JPEG decode)",
              "original bytes kept", "files on disk", "added packages", "added MiB"]  # fmt: skip
    body = []
    for r in rows:
        deps = r.get("deps")
        dep_cells = [str(deps["packages"]), f"{deps['bytes'] / common.MIB:.0f}"] if deps else ["-", "-"]
        if "error" in r:
            body.append([r["format"], deps["version"] if deps else "-", r["error"][:70], "", "", "", "", "", *dep_cells])
            continue
        body.append([
            r["format"], deps["version"], f"{r['pack_s']:.1f}", f"{r['read_raw_per_s']:,.0f}",
            f"{r['read_us_per_sample']:.0f}", f"{r['read_decode_per_s']:,.0f}", "yes" if r["original_bytes_kept"] and r["samples_read"] == images else "NO",
            str(r["files_on_disk"]), *dep_cells,
        ])  # fmt: skip
    return common.markdown_table(header, body)


if __name__ == "__main__":
    main()
