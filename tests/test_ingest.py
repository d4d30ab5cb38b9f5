"""Ingest: both row shapes, templates, pair construction, and one clear line per bad input."""

import json

import pytest

from orm_cache.config import DataSpec
from orm_cache.data import DataError, load_split, trace_key

from conftest import pointwise_rows, write_jsonl


def test_trace_key_is_sha256_of_exact_text():
    import hashlib

    assert trace_key("a b") == hashlib.sha256(b"a b").hexdigest()
    assert trace_key("a b") != trace_key("a b ")


def test_pairwise_with_prompt_template_and_meta(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "meta": {"source": "x"}, "id": 1},
        {"prompt": "Q1", "chosen": "good", "rejected": "worse", "id": 2},
    ])
    d = load_split(DataSpec(data=str(f), template="Q: {prompt}\nA: {response}"))
    assert d.kind == "pairwise" and len(d.pairs) == 2
    assert len(d.texts) == 3  # "good" is shared by both pairs
    assert d.texts[d.pairs.chosen[0]] == "Q: Q1\nA: good"
    assert d.pairs.meta[0] == {"meta": {"source": "x"}, "id": 1}


def test_pointwise_pairs_within_group_seeded(tmp_path):
    rows = pointwise_rows(10, per_group=6)
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    d = load_split(DataSpec(data=str(f), split="train"))
    assert d.kind == "pointwise" and len(d.keys) == 60 and d.labels.sum() == 10
    # 1 positive and 5 negatives per group: K=8 takes all 5.
    assert len(d.pairs) == 50
    group_of = dict(zip(d.keys, d.groups))
    assert all(group_of[c] == group_of[r] for c, r in zip(d.pairs.chosen, d.pairs.rejected))
    d4 = load_split(DataSpec(data=str(f), split="train", negatives=3))
    assert len(d4.pairs) == 30
    again = load_split(DataSpec(data=str(f), split="train", negatives=3))
    assert d4.pairs.rejected == again.pairs.rejected
    other = load_split(DataSpec(data=str(f), split="train", negatives=3, pair_seed=1))
    assert other.pairs.rejected != d4.pairs.rejected


def test_default_negatives_8_train_4_otherwise():
    assert DataSpec(split="train").negatives_per_positive == 8
    assert DataSpec(split="validation").negatives_per_positive == 4
    assert DataSpec(split="test", negatives=2).negatives_per_positive == 2


def test_directory_split_files_and_aliases(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"chosen": "a", "rejected": "b"}])
    write_jsonl(tmp_path / "val.jsonl", [{"chosen": "c", "rejected": "d"}])
    assert load_split(DataSpec(data=str(tmp_path), split="validation")).pairs.chosen == [trace_key("c")]
    with pytest.raises(DataError, match="no file for split 'test'.*found: train.jsonl, val.jsonl"):
        load_split(DataSpec(data=str(tmp_path), split="test"))


def test_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("text,label,group\nright,1,g\nwrong,0,g\n")
    d = load_split(DataSpec(data=str(tmp_path / "d.csv")))
    assert d.labels.tolist() == [1, 0] and len(d.pairs) == 1
    pq.write_table(pa.table({"chosen": ["a"], "rejected": ["b"]}), tmp_path / "d.parquet")
    assert len(load_split(DataSpec(data=str(tmp_path / "d.parquet"))).pairs) == 1


@pytest.mark.parametrize("content, message", [
    (b'{"text": "a", "label": 1}\n{"text": "b", "label": 0\n', r"d.jsonl:2: malformed JSON"),
    (b'{"text": "a", "label": 1}\n{"text": "", "label": 0}\n', r"d.jsonl:2: column 'text' is empty"),
    (b'{"text": "a", "label": 1}\n{"text": 5, "label": 0}\n', r"d.jsonl:2: column 'text' must be a string, got int"),
    (b'{"text": "a", "label": 2}\n', r"d.jsonl:1: column 'label' must be 0 or 1, got 2"),
    (b'{"chosen": "a", "rejected": "a"}\n', r"d.jsonl:1: chosen and rejected are the same text"),
    (b'{"answer": "a"}\n', r"d.jsonl:1: neither pairwise columns .* columns are \['answer'\]"),
    (b'{"text": "a", "label": 1}\n{"text": "\xff\xfe", "label": 0}\n', r"d.jsonl:2: bytes are not valid UTF-8"),
    (b'{"chosen": "a", "rejected": "b"}\n{"chosen": "a"}\n', r"d.jsonl:2: column 'rejected' is missing"),
])
def test_bad_rows_name_file_row_and_problem(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_split(DataSpec(data=str(tmp_path / "d.jsonl")))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_split(DataSpec(data=str(tmp_path / "nope.jsonl")))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unknown format '.txt'"):
        load_split(DataSpec(data=str(tmp_path / "d.txt")))


def test_duplicate_pairs_are_counted(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"chosen": "a", "rejected": "b"}] * 3 + [{"chosen": "a", "rejected": "c"}])
    d = load_split(DataSpec(data=str(f)))
    assert d.stats["duplicate_pairs"] == 2 and len(d.pairs) == 4


def test_single_file_split_column(tmp_path):
    f = write_jsonl(tmp_path / "all.jsonl", [{"chosen": "a", "rejected": "b", "split": "train"},
                                             {"chosen": "c", "rejected": "d", "split": "test"}])
    assert len(load_split(DataSpec(data=str(f), split="test")).pairs) == 1


def test_json_list_file(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"chosen": "a", "rejected": "b"}]))
    assert len(load_split(DataSpec(data=str(tmp_path / "d.json"))).pairs) == 1
