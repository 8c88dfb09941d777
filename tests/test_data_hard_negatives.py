"""ITM hard negatives that are really negative: ``pretrain.vl.itm_exclude_same_text`` keeps pairs whose caption equals
the positive's (token for token, padding ignored) out of the negative pool, in both directions."""

from __future__ import annotations

import torch

from vlmo_cli.objectives.matching import sample_hard_negatives, text_keys
from vlmo_cli.config.schema import PretrainVLTask
from vlmo_cli.train import stages
from vlmo_cli.train.build import StageModule

# captions as groups: rows 0, 2 and 5 say the same thing, as do rows 1 and 4; rows 3 and 6 are unique
GROUPS = torch.tensor([0, 1, 0, 2, 1, 0, 3])


def caption_batch(groups: torch.Tensor, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``[CLS] w(g) w(g)+1 [SEP]`` per group g, padded with junk (not zeros) after a per-row length, so
    only an equality that ignores the padding finds the duplicates."""
    b = len(groups)
    ids = torch.randint(20, 60, (b, length), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(b, length, dtype=torch.long)
    mask[:, :4] = 1
    ids[:, 0], ids[:, 1], ids[:, 2], ids[:, 3] = 2, 10 + groups, 11 + groups, 3
    return ids, mask


def duplicate_favouring_logits(groups: torch.Tensor) -> torch.Tensor:
    """Similarities that make the same-caption pairs by far the most likely draw (as on data with repeated captions)."""
    same = groups[:, None] == groups[None, :]
    return same.float() * 30.0


def draws(groups, keys, repeats=50):
    logits = duplicate_favouring_logits(groups)
    g = torch.Generator().manual_seed(0)
    picked = [sample_hard_negatives(logits, logits.t(), len(groups), generator=g, text_keys=keys) for _ in range(repeats)]
    return torch.stack([p.text_index for p in picked]), torch.stack([p.image_index for p in picked])


def test_text_keys_ignore_padding():
    ids, mask = caption_batch(GROUPS)
    keys = text_keys(ids, mask)
    same = (keys[:, None] == keys[None]).all(-1)
    assert torch.equal(same, GROUPS[:, None] == GROUPS[None, :])
    assert not torch.equal(ids[0], ids[2])  # the raw padded rows differ


def test_same_caption_never_drawn_when_excluded():
    ids, mask = caption_batch(GROUPS)
    texts, images = draws(GROUPS, text_keys(ids, mask))
    rows = torch.arange(len(GROUPS))
    for index in (texts, images):
        assert (index != rows).all()
        assert (GROUPS[index] != GROUPS).all()  # neither a caption like the image's own, nor an image captioned so


def test_without_exclusion_duplicates_dominate():
    """The official sampler (only the exact positive excluded) draws the identical caption almost always here."""
    texts, images = draws(GROUPS, None)
    repeated = torch.tensor([0, 1, 2, 4, 5])  # rows whose caption occurs more than once
    assert (GROUPS[texts] == GROUPS)[:, repeated].float().mean() > 0.9
    assert (GROUPS[images] == GROUPS)[:, repeated].float().mean() > 0.9


def test_row_without_valid_candidate_falls_back():
    """Every caption identical: nothing is excluded-free, so the draw falls back to the other rows (as without keys)."""
    groups = torch.zeros(4, dtype=torch.long)
    ids, mask = caption_batch(groups)
    texts, images = draws(groups, text_keys(ids, mask), repeats=5)
    assert ((texts >= 0) & (texts < 4)).all() and ((images >= 0) & (images < 4)).all()


def test_stage3_objective_uses_the_recipe_key(monkeypatch):
    """Through the stage-3 objective with the schema's task: the sampler receives the caption keys only when the
    key is on."""
    from vlmo_cli.model.config import get_config
    from vlmo_cli.model.vlmo import VLMo

    seen = []
    real = stages.sample_hard_negatives

    def spy(*args, **kwargs):
        seen.append(kwargs.get("text_keys"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "sample_hard_negatives", spy)
    torch.manual_seed(0)
    model = VLMo(get_config("tiny", vocab_size=64, heads=["pooler", "itc", "itc_vl", "itm", "mlm"]))
    ids, mask = caption_batch(GROUPS)
    batch = {"pixel_values": torch.randn(len(GROUPS), 3, 32, 32), "input_ids": ids, "attention_mask": mask,
             "mlm_input_ids": ids.clone(), "mlm_labels": torch.where(mask.bool(), ids, -100),
             "image_ids": torch.arange(len(GROUPS))}
    for on in (False, True):
        task = PretrainVLTask(dataset=("unused",), itm_exclude_same_text=on)
        StageModule(model, stages.STAGE_DEFS["pretrain.vl"], task)(batch)
    assert seen[0] is None
    assert torch.equal(seen[1], text_keys(ids, mask)[:, :4])  # the step trims the all-padding columns first
