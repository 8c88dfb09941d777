"""``benchmarks/itm_negatives.py`` runs end to end on the demo pairs and counts every drawn negative once."""

from __future__ import annotations

from helpers import load_benchmark


def test_itm_negatives_smoke(demo_root, tmp_path, capsys):
    from vlmo_cli.factory import save_model
    from vlmo_cli.model.config import get_config
    from vlmo_cli.model.vlmo import VLMo

    model_dir = save_model(VLMo(get_config("tiny", vocab_size=160, max_text_len=16, heads=["pooler", "itc"])),
                           tmp_path / "model")
    module = load_benchmark("itm_negatives")
    counts = module.main([str(model_dir), "--pairs", str(demo_root / "demo_data" / "pairs"), "--batches", "2",
                          "--batch", "8"])
    assert set(counts) == {"official", "uniform"}
    for counter in counts.values():
        assert sum(counter.values()) == 16
        assert all(set(differ) <= set(module.ATTRIBUTES) for differ in counter)
    out = capsys.readouterr().out
    assert "| official |" in out and "| uniform |" in out
