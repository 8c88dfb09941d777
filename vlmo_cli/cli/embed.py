"""``vlmo embed`` (batched embeddings to a safetensors file) and ``vlmo search`` (query a folder of images):
thin wrappers over :mod:`vlmo_cli.inference.embed` and :mod:`vlmo_cli.inference.search`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import VlmoError

console = Console()

ModelOpt = typer.Option(..., "--model", help="model directory, run folder or checkpoints/step_N")
DeviceOpt = typer.Option(None, "--device", help="torch device (default: cuda when available, else cpu)")
TokenizerOpt = typer.Option(None, "--tokenizer", help="tokenizer.json / vocab.txt / folder (default: the model's own)")


def embed(
    paths: list[Path] = typer.Argument(None, help="more image files or folders (as with --images)"),
    model: str = ModelOpt,
    images: list[Path] = typer.Option(None, "--images", help="image files or folders (folders are searched recursively)"),
    texts: Path = typer.Option(None, "--texts", help="a UTF-8 text file: one text per non-empty line"),
    out: Path = typer.Option(..., "--out", help="output FILE.safetensors (embeddings + ids in the metadata)"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    image_size: int = typer.Option(None, "--image-size", help="resolution (default: the model's)"),
    device: str = DeviceOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a previous embeddings file at --out "
                                                              "(any other file is never replaced)"),
    tokenizer: Path = TokenizerOpt,
) -> None:
    """Dual-encoder embeddings (L2-normalised) of images or lines of text, with their ids."""
    from ..factory import load_inference_model
    from ..inference.embed import embed as run_embed

    image_list = [*(images or []), *(paths or [])]
    if image_list and texts is not None:
        raise VlmoError("give either images (--images PATH...) or --texts FILE, not both")
    source = model if tokenizer is None else load_inference_model(model, image_size=image_size, device=device,
                                                                    tokenizer=tokenizer)
    result, path = run_embed(source, out, images=image_list or None, texts=texts, batch_size=batch_size,
                             device=device, image_size=image_size, overwrite=overwrite)
    console.print(f"{len(result)} {result.kind} embeddings of dimension {result.embeddings.shape[1]} → {path}")
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} unreadable input(s)[/], e.g. "
                      f"{result.skipped[0]['id']}: {result.skipped[0]['reason']}")


def search(
    query: str = typer.Argument(None, help='text query, e.g. "a red car on a street"'),
    model: str = ModelOpt,
    index: Path = typer.Option(None, "--index", help="folder of images to search (its index is cached and updated)"),
    captions: Path = typer.Option(None, "--captions", help="search the lines of this caption file instead "
                                  "(image -> text with --image)"),
    image: Path = typer.Option(None, "--image", help="search with this image instead of a text"),
    top_k: int = typer.Option(5, "--top-k", min=1, help="results to show"),
    rerank_k: int = typer.Option(0, "--rerank-k", min=0, help="re-score the top K with the fusion encoder's ITM head"),
    ann: str = typer.Option(None, "--ann", help="auto (exact below 100,000 entries, else IVF-PQ), flat, ivfpq or "
                            "hnsw; default: the stored index's choice, auto for a new one"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="keep the index here instead of FOLDER/.vlmo_index/"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str = DeviceOpt,
    tokenizer: Path = TokenizerOpt,
) -> None:
    """Find the images of a folder (or the captions of a file) that best match a text or an image."""
    from rich.table import Table

    from ..factory import load_inference_model
    from ..inference.ann import resolve_kind
    from ..inference.search import search_folder

    if (query is None) == (image is None):
        raise VlmoError('give a text query ("a red car") or --image QUERY.jpg, exactly one')
    if (index is None) == (captions is None):
        raise VlmoError("give --index FOLDER (images) or --captions FILE (one caption a line), exactly one")
    if ann is not None:
        resolve_kind(ann, 0)  # a typo fails before the model loads
    loaded = load_inference_model(model, device=device, tokenizer=tokenizer)
    result = search_folder(loaded, index, query, image=image, top_k=top_k, rerank_k=rerank_k,
                           cache_dir=cache_dir, batch_size=batch_size, ann=ann, captions=captions)
    s = result.stats
    what = "images" if captions is None else "captions"
    console.print(f"index {result.index.file}: {len(result.index)} {what}"
                  + (" (rebuilt)" if s.rebuilt else f" ({s.embedded} embedded, {s.removed} removed)")
                  + (f", {s.unreadable} unreadable" if s.unreadable else "") + f" in {s.seconds:.2f}s; "
                  + result.index.describe_ann() + (" (built now)" if s.ann_built else ""),
                  soft_wrap=True)  # one line, so the index path stays whole
    reranked = any(h.itm is not None for h in result.hits)
    table = Table(title=f"top {len(result.hits)} for " + (repr(query) if query is not None else str(image)),
                  header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    if reranked:
        table.add_column("cosine", justify="right")
        table.add_column("ITM", justify="right")
    table.add_column("image" if captions is None else "caption (line: text)", style="cyan", overflow="fold")
    for hit in result.hits:
        extra = [f"{hit.similarity:.4f}", "-" if hit.itm is None else f"{hit.itm:.3f}"] if reranked else []
        table.add_row(str(hit.rank), f"{hit.score:.4f}", *extra, hit.label)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("search")(search)
