"""One example command line per ``vlmo`` command, shown at the end of that command's ``--help``.

Each example is a command line of its own command (checked by the test suite: it starts with the command's path
and parses with the command's own options), so no help page shows another command's example.
"""

from __future__ import annotations

import typer

EXAMPLES: dict[str, str] = {
    "pretrain-vision": "vlmo pretrain-vision tiny train.max_steps=50 --run-name vision-try",
    "pretrain-text": "vlmo pretrain-text tiny pretrain.text.init=runs/tiny-pretrain-vision train.lr=1e-3",
    "pretrain-vl": "vlmo pretrain-vl base train.lr=1e-4 pretrain.vl.batch_size=512 --resume auto",
    "pretrain-mdm": "vlmo pretrain-mdm tiny pretrain.mdm.pair_fraction=0.75 pretrain.mdm.text_fraction=0 "
    "pretrain.mdm.text_dataset=[] --resume auto",
    "finetune": "vlmo finetune vqa base --from models/vlmo-base finetune.vqa.lr=2e-5",
    "embed": "vlmo embed --model exported/tiny --images photos/ --out photos.safetensors",
    "search": 'vlmo search "a red circle on the left" --model exported/tiny --index photos/ --top-k 5',
    "export": "vlmo export runs/tiny-finetune-retrieval_coco exported/tiny --format onnx",
    "bench": "vlmo bench base --stage vl --batch 32 --precision bf16 --steps 20",
    "quickstart": "vlmo quickstart --out vlmo-quickstart train.seed=2",
    "recipes list": "vlmo recipes list",
    "recipes show": "vlmo recipes show base train.lr=1e-4 --resolved pretrain.vl",
    "recipes validate": "vlmo recipes validate my_recipe.toml base",
    "model info": "vlmo model info base",
    "prepare coco-karpathy": "vlmo prepare coco-karpathy --annotations dataset_coco.json --images coco/ --out data/coco",
    "prepare flickr30k-karpathy": "vlmo prepare flickr30k-karpathy --annotations dataset_flickr30k.json "
    "--images flickr30k-images/ --out data/flickr30k",
    "prepare vqav2": "vlmo prepare vqav2 --root vqa_json/ --images coco/ --out data/vqav2",
    "prepare nlvr2": "vlmo prepare nlvr2 --annotations nlvr2/data --images nlvr2_images/ --out data/nlvr2",
    "prepare pairs": "vlmo prepare pairs train.csv --format csv --image-col path --caption-col text --out data/mine",
    "prepare images": "vlmo prepare images imgs/ --out data/imgs",
    "prepare text": "vlmo prepare text corpus/ --out data/text --mode paragraphs",
    "prepare demo": "vlmo prepare demo --out demo_data",
    "prepare inspect": "vlmo prepare inspect data/coco --samples 5",
    "prepare tokenizer": "vlmo prepare tokenizer data/coco data/text --out data/tokenizer --vocab-size 30522",
    "convert official": "vlmo convert official vlmo_base_patch16_224.pt models/vlmo-base --vocab vocab.txt",
    "convert beit": "vlmo convert beit beit_base_patch16_224_pt22k.pth models/beit-base --size base",
    "convert beit3": "vlmo convert beit3 beit3_base_patch16_480_vqa.pth models/beit3-base-vqa",
    "convert vqkd": "vlmo convert vqkd vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth models/vqkd-clip",
    "eval retrieval": "vlmo eval retrieval tiny --model runs/tiny-finetune-retrieval_coco --split coco-test",
    "eval vqa": "vlmo eval vqa tiny --model runs/tiny-finetune-vqa --split val",
    "eval nlvr2": "vlmo eval nlvr2 tiny --model runs/tiny-finetune-nlvr2 --split dev",
    "eval classify": "vlmo eval classify --model runs/tiny-finetune-classify --split val",
    "report": "vlmo report runs/tiny-pretrain-vl --out tiny-vl.html",
    "serve": "vlmo serve --model exported/tiny --index photos/ --port 8000",
}


def epilog(example: str) -> str:
    """The help-page ending of an example (``\\b`` keeps click from re-wrapping the command line)."""
    return f"\b\nExample:\n  {example}"


def add_examples(app: typer.Typer, prefix: str = "") -> None:
    """Attach :data:`EXAMPLES` to the commands of ``app`` and of its command groups (unless one has an epilog)."""
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__.replace("_", "-") if command.callback else "")
        example = EXAMPLES.get(f"{prefix}{name}")
        if example and not command.epilog:
            command.epilog = epilog(example)
    for group in app.registered_groups:
        name = group.name or group.typer_instance.info.name
        add_examples(group.typer_instance, f"{prefix}{name} ")
