import pytest
"""The demo runs every stage offline, and a second run embeds nothing."""


from orm_cache.pipeline import demo


@pytest.mark.slow
def test_demo_end_to_end_then_fully_cached(minilm_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "SIZES", {"train": 30, "validation": 10, "test": 10})
    lines = []
    r = demo.run_demo(tmp_path / "demo", tmp_path / "cache", quiet=True, say=lines.append)
    text = "\n".join(lines)
    for stage in ("[1/6] make data", "[2/6] embed", "[3/6] fit-head", "[4/6] eval", "[5/6] verify", "[6/6] rank"):
        assert stage in text
    assert r["verify"]["ok"] and "orm-cache eval --head" in text and "best-of-N accuracy" in text
    assert 0.0 <= r["report"]["accuracy"] <= 1.0 and 0.0 <= r["tfidf"] <= 1.0
    lines.clear()
    demo.run_demo(tmp_path / "demo", tmp_path / "cache", quiet=True, say=lines.append)
    embeds = [l for l in lines if " cached, " in l and " embedded" in l]
    assert len(embeds) == 3 and all(l.rstrip().endswith(" 0 embedded") for l in embeds), embeds
