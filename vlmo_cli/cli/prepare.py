"""``vlmo prepare``: convert external data once into a prepared dataset directory (see :mod:`vlmo_cli.data.store`).

Thin layer: every command builds a source from :mod:`vlmo_cli.data.sources` and calls
:func:`vlmo_cli.data.prepare.prepare`; ``demo``, ``inspect`` and ``tokenizer`` call
:func:`vlmo_cli.data.demo.make_demo`, :func:`vlmo_cli.data.summary.summarize` and
:func:`vlmo_cli.data.tokenizer.train_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import DataError

console = Console()
prepare_app = typer.Typer(
    name="prepare",
    help="Convert data you have (COCO/Flickr30k Karpathy, VQAv2, NLVR2, image-text pairs, image folders, text) "
    "into a prepared dataset directory; `vlmo prepare demo` writes the built-in synthetic data.",
    no_args_is_help=True,
)

OutOpt = typer.Option(..., "--out", "-o", help="Output directory (the prepared dataset).")
WorkersOpt = typer.Option(0, "--workers", "-j", help="Image decoding worker processes (0 = in-process).")
SeedOpt = typer.Option(0, "--seed", help="Seed for every hold-out/shuffle; same seed, same output.")
MaxSizeOpt = typer.Option(None, "--max-size", help="Limit the shorter image side (re-encode); default keeps images.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a previous result of this command at --out (a folder "
                                                        "holding anything else is never replaced).")
BadOpt = typer.Option(0.5, "--max-bad-fraction", help="Fail when more than this fraction of samples is bad.")
TokOpt = typer.Option(None, "--tokenizer", help="vocab.txt / tokenizer.json / folder to store with the data.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")
OutFormatOpt = typer.Option("prepared", "--out-format", help="prepared (an Arrow directory) or webdataset (tar shards "
                                                             "with sizes.json per split, for streamed training)")
PerShardOpt = typer.Option(5000, "--samples-per-shard", help="With --out-format webdataset: samples per shard.")


def _run(source: Any, out: Path, workers: int, seed: int, max_size: Optional[int], overwrite: bool,
         max_bad_fraction: float, tokenizer: Optional[Path], progress: bool, inputs: tuple = (),
         out_format: str = "prepared", samples_per_shard: int = 5000) -> None:
    """Prepare ``source`` into ``out`` (a prepared directory or webdataset shards); ``inputs`` (the source's files)
    may not be replaced by the output."""
    from ..data.prepare import PrepareOptions, prepare

    if out_format not in ("prepared", "webdataset"):
        raise DataError(f"--out-format {out_format!r} is not allowed; allowed: prepared, webdataset")
    if out_format == "webdataset" and tokenizer is not None:
        raise DataError("--tokenizer is stored with prepared directories only; with --out-format webdataset set "
                        "data.tokenizer in the recipe")
    options = PrepareOptions(workers=workers, seed=seed, max_size=max_size, overwrite=overwrite,
                             max_bad_fraction=max_bad_fraction, progress=progress, tokenizer=tokenizer,
                             inputs=tuple(p for p in inputs if p is not None))
    if out_format == "webdataset":
        from ..data.shard_writer import write_shards

        summary = write_shards(source, out, options, samples_per_shard)
        splits = ", ".join(f"{k} {v['samples']} samples in {v['shards']} shard(s) ({out / v['folder']}/)"
                           for k, v in summary["splits"].items())
        console.print(f"[bold green]wrote shards[/] {out} ({summary['kind']}): {splits}; "
                      f"{summary['counts']['skipped']} skipped in {summary['seconds']:.1f} s", highlight=False)
        for reason, n in summary["skipped_by_reason"].items():
            console.print(f"  skipped {n} x {reason} (details: shards.json 'skipped')", highlight=False)
        return
    manifest = prepare(source, out, options)
    _print_manifest(out, manifest)


def _print_manifest(out: Path, manifest: dict[str, Any]) -> None:
    counts = manifest["counts"]
    splits = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    console.print(f"[bold green]prepared[/] {out} ({manifest['kind']}): {splits}; "
                  f"{counts['rows']} rows, {counts['images']} images, {counts['skipped']} skipped "
                  f"in {manifest['seconds']:.1f} s", highlight=False)
    for reason, n in manifest.get("skipped_by_reason", {}).items():
        console.print(f"  skipped {n} x {reason} (details: manifest.json 'skipped')", highlight=False)


GroupFieldOpt = typer.Option(None, "--group-field", help="Image-entry field whose equal values mark duplicates "
                             "(stored as 'group'; see pretrain.vl.itm_exclude_same_group)")


@prepare_app.command("coco-karpathy")
def coco_karpathy(
    annotations: Path = typer.Option(..., "--annotations", help="dataset_coco.json"),
    images: Path = typer.Option(..., "--images", help="COCO root holding train2014/ and val2014/"),
    group_field: Optional[str] = GroupFieldOpt,
    out: Path = OutOpt, workers: int = WorkersOpt, seed: int = SeedOpt, max_size: Optional[int] = MaxSizeOpt,
    overwrite: bool = OverwriteOpt, max_bad_fraction: float = BadOpt, tokenizer: Optional[Path] = TokOpt,
    progress: bool = ProgressOpt, out_format: str = OutFormatOpt, samples_per_shard: int = PerShardOpt,
) -> None:
    """COCO Karpathy splits (train/restval/val/test), one row per image with all its captions."""
    from ..data.sources import KarpathySource

    _run(KarpathySource(annotations, images, dataset="coco", group_field=group_field), out, workers, seed, max_size,
         overwrite, max_bad_fraction, tokenizer, progress, inputs=(annotations, images), out_format=out_format,
         samples_per_shard=samples_per_shard)


@prepare_app.command("flickr30k-karpathy")
def flickr30k_karpathy(
    annotations: Path = typer.Option(..., "--annotations", help="dataset_flickr30k.json"),
    images: Path = typer.Option(..., "--images", help="flickr30k-images/ folder"),
    group_field: Optional[str] = GroupFieldOpt,
    out: Path = OutOpt, workers: int = WorkersOpt, seed: int = SeedOpt, max_size: Optional[int] = MaxSizeOpt,
    overwrite: bool = OverwriteOpt, max_bad_fraction: float = BadOpt, tokenizer: Optional[Path] = TokOpt,
    progress: bool = ProgressOpt, out_format: str = OutFormatOpt, samples_per_shard: int = PerShardOpt,
) -> None:
    """Flickr30k Karpathy splits (train/val/test), one row per image with its captions."""
    from ..data.sources import KarpathySource

    _run(KarpathySource(annotations, images, dataset="flickr30k", group_field=group_field), out, workers, seed,
         max_size, overwrite, max_bad_fraction, tokenizer, progress, inputs=(annotations, images),
         out_format=out_format, samples_per_shard=samples_per_shard)


@prepare_app.command("vqav2")
def vqav2(
    root: Path = typer.Option(..., "--root", help="Folder with the official *_questions.json / *_annotations.json"),
    images: Optional[Path] = typer.Option(None, "--images", help="COCO root (train2014/, val2014/, test2015/); default --root"),
    min_answer_count: int = typer.Option(9, "--min-answer-count", help="Keep answers seen this often in train+val."),
    rest_val_images: int = typer.Option(1000, "--rest-val-images", help="Val images held out as rest_val (0: none)."),
    normalize_raw_answers: bool = typer.Option(False, "--normalize-raw-answers",
                                               help="Normalise annotator answers before scoring (official: no)."),
    out: Path = OutOpt, workers: int = WorkersOpt, seed: int = SeedOpt, max_size: Optional[int] = MaxSizeOpt,
    overwrite: bool = OverwriteOpt, max_bad_fraction: float = BadOpt, tokenizer: Optional[Path] = TokOpt,
    progress: bool = ProgressOpt,
) -> None:
    """VQAv2: answer vocabulary, soft scores, seeded rest_val hold-out, test splits without answers."""
    from ..data.sources import Vqav2Source

    source = Vqav2Source.from_root(root, images, min_count=min_answer_count, rest_val_images=rest_val_images,
                                   seed=seed, normalize_raw=normalize_raw_answers)
    _run(source, out, workers, seed, max_size, overwrite, max_bad_fraction, tokenizer, progress,
         inputs=(root, images))


@prepare_app.command("nlvr2")
def nlvr2(
    annotations: Path = typer.Option(..., "--annotations", help="nlvr2/data folder (train.json, dev.json, test1.json) or one file"),
    images: Path = typer.Option(..., "--images", help="Image root (train/<directory>/, dev/, test1/, or images/...)"),
    out: Path = OutOpt, workers: int = WorkersOpt, seed: int = SeedOpt, max_size: Optional[int] = MaxSizeOpt,
    overwrite: bool = OverwriteOpt, max_bad_fraction: float = BadOpt, tokenizer: Optional[Path] = TokOpt,
    progress: bool = ProgressOpt,
) -> None:
    """NLVR2 statements with their image pairs."""
    from ..data.sources import Nlvr2Source

    _run(Nlvr2Source.from_root(annotations, images), out, workers, seed, max_size, overwrite, max_bad_fraction,
         tokenizer, progress, inputs=(annotations, images))


@prepare_app.command("pairs")
def pairs(
    path: Path = typer.Argument(..., help="TSV/CSV/JSON/JSONL file, VG region_descriptions.json, a saved HF dataset, "
                                          "or webdataset shards (folder/glob/file)"),
    fmt: str = typer.Option(..., "--format", "-f", help="tsv, csv, json, jsonl, vg, hf or webdataset"),
    images: Optional[Path] = typer.Option(None, "--images", help="Root for relative image paths (default: the file's folder)"),
    image_col: Optional[str] = typer.Option(None, "--image-col", help="Image column name (or number without header)"),
    caption_col: Optional[str] = typer.Option(None, "--caption-col", help="Caption column name (or number)"),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Group rows with equal ids into one image"),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="Class label column: labelled pairs for classification"),
    split_col: Optional[str] = typer.Option(None, "--split-col", help="Take the split of each row from this column"),
    group_col: Optional[str] = typer.Option(None, "--group-col", help="Duplicate-group column (tsv/csv/json/jsonl): "
                                            "images with equal values are never each other's ITM hard negatives "
                                            "under pretrain.vl.itm_exclude_same_group"),
    split: str = typer.Option("train", "--split", help="Split name for all rows"),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="Seeded fraction of rows held out as 'val', whole images at a time"),
    out: Path = OutOpt, workers: int = WorkersOpt, seed: int = SeedOpt, max_size: Optional[int] = MaxSizeOpt,
    overwrite: bool = OverwriteOpt, max_bad_fraction: float = BadOpt, tokenizer: Optional[Path] = TokOpt,
    progress: bool = ProgressOpt, out_format: str = OutFormatOpt, samples_per_shard: int = PerShardOpt,
) -> None:
    """Image-text pairs for pre-training or your own task (grouped per image; labelled with --label-col)."""
    from ..data.sources import FilePairsSource, HfPairsSource, VisualGenomeSource, WebDatasetSource

    grouped = dict(split=split, val_fraction=val_fraction, seed=seed, label_col=label_col)
    if group_col is not None and fmt not in ("tsv", "csv", "json", "jsonl"):
        raise DataError(f"--group-col works with --format tsv, csv, json or jsonl, not {fmt!r}")
    if fmt in ("tsv", "csv", "json", "jsonl"):
        source = FilePairsSource(path, fmt, images=images, image_col=image_col, caption_col=caption_col,
                                 id_col=id_col, split_col=split_col, group_col=group_col, **grouped)
    elif fmt == "vg":
        source = VisualGenomeSource(path, images if images is not None else path.parent, **grouped)
    elif fmt == "hf":
        source = HfPairsSource(path, images=images, image_col=image_col, caption_col=caption_col, id_col=id_col,
                               **grouped)
    elif fmt == "webdataset":
        source = WebDatasetSource(str(path), split=split)
    else:
        raise DataError(f"--format {fmt!r} is not allowed; allowed: tsv, csv, json, jsonl, vg, hf, webdataset")
    _run(source, out, workers, seed, max_size, overwrite, max_bad_fraction, tokenizer, progress,
         inputs=(path, images) if fmt != "webdataset" else (images,), out_format=out_format,
         samples_per_shard=samples_per_shard)


@prepare_app.command("images")
def images_cmd(
    root: Path = typer.Argument(..., help="Folder tree of images (train/ val/ test/ sub-folders become splits)"),
    out: Path = OutOpt, workers: int = WorkersOpt, seed: int = SeedOpt, max_size: Optional[int] = MaxSizeOpt,
    overwrite: bool = OverwriteOpt, max_bad_fraction: float = BadOpt, progress: bool = ProgressOpt,
    out_format: str = OutFormatOpt, samples_per_shard: int = PerShardOpt,
) -> None:
    """Images only, for vision pre-training."""
    from ..data.sources import ImageFolderSource

    _run(ImageFolderSource(root), out, workers, seed, max_size, overwrite, max_bad_fraction, None, progress,
         inputs=(root,), out_format=out_format, samples_per_shard=samples_per_shard)


@prepare_app.command("text")
def text_cmd(
    paths: list[Path] = typer.Argument(..., help="Text files or folders of *.txt"),
    mode: str = typer.Option("lines", "--mode", help="lines (one segment per line) or paragraphs (blank-line separated)"),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="Seeded fraction of segments held out as 'val'"),
    out: Path = OutOpt, seed: int = SeedOpt, overwrite: bool = OverwriteOpt, max_bad_fraction: float = BadOpt,
    tokenizer: Optional[Path] = TokOpt, progress: bool = ProgressOpt, out_format: str = OutFormatOpt,
    samples_per_shard: int = PerShardOpt,
) -> None:
    """A plain-text corpus, for language pre-training."""
    from ..data.sources import TextCorpusSource

    source = TextCorpusSource(list(paths), mode=mode, val_fraction=val_fraction, seed=seed)
    _run(source, out, 0, seed, None, overwrite, max_bad_fraction, tokenizer, progress, inputs=tuple(paths),
         out_format=out_format, samples_per_shard=samples_per_shard)


@prepare_app.command("demo")
def demo(
    out: Path = OutOpt, seed: int = SeedOpt, overwrite: bool = OverwriteOpt, progress: bool = ProgressOpt,
) -> None:
    """The built-in synthetic world (coloured shapes): pairs, vqa, nlvr2, images, text and a tokenizer."""
    from ..data.demo import make_demo

    index = make_demo(out, seed=seed, overwrite=overwrite, progress=progress)
    console.print(f"[bold green]demo data[/] in {out} (tokenizer: {index['vocab_size']} tokens)", highlight=False)
    for name, info in index["subsets"].items():
        splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
        console.print(f"  {out / name}: {info['kind']}: {splits}", highlight=False)


@prepare_app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="A prepared dataset directory"),
    samples: int = typer.Option(3, "--samples", help="Rows to show"),
    skipped: int = typer.Option(20, "--skipped", help="Skipped samples to list"),
) -> None:
    """Counts, split sizes, text lengths, answers, samples and the skipped-sample report."""
    from ..data.summary import summarize

    info = summarize(path, samples=samples)
    console.print(f"[bold]{info['path']}[/]  kind [cyan]{info['kind']}[/]  source {info['source']}", highlight=False)
    table = Table("split", "rows")
    for name, n in info["splits"].items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(f"counts: {info['counts']}", highlight=False)
    if info.get("tokenizer"):
        console.print(f"tokenizer: {info['tokenizer']}", highlight=False)
    if "text_length_words" in info:
        stats = info["text_length_words"]
        console.print(f"text length (words): mean {stats['mean']}, max {stats['max']}, histogram {stats['histogram']}",
                      highlight=False)
    if "top_answers" in info:
        console.print(f"answers: {info['num_answers']}; most frequent: {info['top_answers']}", highlight=False)
    if "labels" in info:
        console.print(f"labels: {info['labels']}", highlight=False)
    for row in info["samples"]:
        console.print(f"  sample: {row}", highlight=False, soft_wrap=True)
    console.print(f"skipped: {len(info['skipped'])} {info['skipped_by_reason']}", highlight=False)
    for item in info["skipped"][:skipped]:
        console.print(f"  [{item['split']}] {item['where']}: {item['reason']}", highlight=False)


@prepare_app.command("tokenizer")
def tokenizer_cmd(
    sources: list[Path] = typer.Argument(..., help="Prepared dataset directories and/or plain-text files"),
    out: Path = OutOpt,
    vocab_size: int = typer.Option(30522, "--vocab-size", help="WordPiece vocabulary size"),
    cased: bool = typer.Option(False, "--cased", help="Keep case (default: lower-case, like bert-base-uncased)"),
    min_frequency: int = typer.Option(1, "--min-frequency", help="Drop pieces/words seen fewer times"),
    method: str = typer.Option("wordpiece", "--method", help="wordpiece (sub-word trainer) or words (whole words + "
                                                             "characters, exactly reproducible)"),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train a WordPiece tokenizer on the texts of prepared datasets or text files."""
    from ..data.store import open_prepared
    from ..data.tokenizer import train_tokenizer
    from ..layout import TOKENIZER_CONFIG_NAME, TOKENIZER_FILES, TOKENIZER_JSON_NAME
    from ..outputs import DirectoryOutput, DirKind

    kind = DirKind("vlmo prepare tokenizer", frozenset({*TOKENIZER_FILES, TOKENIZER_CONFIG_NAME}), TOKENIZER_JSON_NAME)
    output = DirectoryOutput(out, kind, overwrite=overwrite, inputs=sources)

    def texts():
        for src in sources:
            if (src / "manifest.json").exists():
                yield from open_prepared(src).texts()
            elif src.is_file():
                with open(src, encoding="utf-8", errors="replace") as handle:
                    yield from (line.strip() for line in handle if line.strip())
            else:
                raise DataError(f"{src}: neither a prepared dataset nor a text file")

    tok = train_tokenizer(texts(), vocab_size, lowercase=not cased, min_frequency=min_frequency, method=method)
    with output as tmp:
        tok.save(tmp)
    console.print(f"[bold green]tokenizer[/] {out}: {tok.vocab_size} tokens (lowercase={tok.lowercase})",
                  highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(prepare_app, name="prepare")
