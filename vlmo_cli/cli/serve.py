"""``vlmo serve``: the HTTP service (search page, /search, /embed, /score, /classify, /health) over a model and,
optionally, the index of an image folder or a caption file. A thin wrapper over :mod:`vlmo_cli.serve`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import VlmoError

console = Console()


def serve(
    model: str = typer.Option(..., "--model", help="model directory, run folder or checkpoints/step_N"),
    index: Path = typer.Option(None, "--index", help="folder of images to search (its index is updated at start)"),
    captions: Path = typer.Option(None, "--captions", help="search the lines of this caption file instead"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (default: this machine only)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="port (0: any free port)"),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.001, help="largest request body accepted"),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="most requests sharing one forward pass"),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", min=0.0, help="how long a request waits for others"),
    labels: Path = typer.Option(None, "--labels", help="JSON list of class names for /classify (default: "
                                "labels.json or answers.json in the model directory)"),
    ann: str = typer.Option(None, "--ann", help="auto, flat, ivfpq or hnsw (as vlmo search)"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="keep the index here instead of FOLDER/.vlmo_index/"),
    device: str = typer.Option(None, "--device", help="torch device (default: cuda when available, else cpu)"),
) -> None:
    """Serve a model over HTTP: a search page at /, JSON endpoints, OpenAPI docs at /docs."""
    from ..inference.ann import resolve_kind
    from ..serve import SearchService, ServeOptions, ServerThread, create_app
    from ..serve.server import LOOPBACK

    if index is not None and captions is not None:
        raise VlmoError("give --index FOLDER (images) or --captions FILE, not both")
    if ann is not None:
        resolve_kind(ann, 0)
    service, stats = SearchService.open(model, index=index, captions=captions, cache_dir=cache_dir, ann=ann,
                                        device=device, labels=labels)
    if service.index is not None:
        console.print(f"index {service.index.file}: {len(service.index)} entries "
                      f"({stats.embedded} embedded in {stats.seconds:.2f}s); {service.index.describe_ann()}")
    options = ServeOptions(max_upload_bytes=int(max_upload_mb * 2**20), max_batch=max_batch,
                           max_wait_ms=batch_wait_ms)
    try:
        server = ServerThread(create_app(service, options), host, port, log_level="warning").start()
    except RuntimeError as exc:
        raise VlmoError(f"cannot serve on {host}:{port} ({exc}; is the port in use?)") from None
    if host not in LOOPBACK:
        console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach it can use the model "
                      "(no authentication)")
    console.print(f"serving on {server.url} (page /, API docs {server.url}/docs); Ctrl+C stops", soft_wrap=True)
    server.wait()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
