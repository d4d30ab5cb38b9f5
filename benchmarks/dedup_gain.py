"""Dedup gain: distinct texts embedded vs pair sides, on reference-shaped data.

The reference data builds 41,656 training pairs from 9,482 traces (8 negatives per positive):
embedding per pair side would run the encoder on 83,312 texts. orm-cache keys each text and
embeds it once. This counts both on the synthetic set built the same way (9 candidates per
problem, 8 negatives per positive for train) and on the GSM8K model solutions when present.

    python benchmarks/dedup_gain.py --write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import GSM8K, publish, table, write_gsm8k_splits  # noqa: E402


def counts(data_dir: str, split: str):
    from orm_cache.config import DataSpec
    from orm_cache.data import load_split

    d = load_split(DataSpec(data=data_dir, split=split))
    sides = 2 * len(d.pairs)
    return [len(d.pairs), sides, len(d.texts), f"{sides / len(d.texts):.1f}x"]


def run(args) -> str:
    from orm_cache.data.synthetic import write_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / "syn", {"train": args.problems}, seed=0, n_candidates=9)
        rows.append([f"synthetic, {args.problems} problems x 9 candidates (train, K=8)",
                     *counts(str(Path(tmp) / "syn" / "pointwise"), "train")])
        if (GSM8K / "model_solutions_dev.jsonl").exists():
            write_gsm8k_splits(Path(tmp) / "gsm8k", fractions=(1.0, 0.0, 0.0))
            rows.append(["GSM8K model solutions, 1,000 problems x 5 candidates (all pairs)",
                         *counts(str(Path(tmp) / "gsm8k"), "train")])
    rows.append(["reference data set (from its card)", 41_656, 83_312, 9_482, f"{83_312 / 9_482:.1f}x"])
    return "\n".join(["### Dedup gain: texts embedded vs pair sides", "",
                      table(["data", "pairs", "pair sides (per-pair embedding)", "distinct texts (orm-cache)",
                             "work saved"], rows)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=1000)
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    out = run(args)
    publish("dedup_gain", out, args.write)
    return out


if __name__ == "__main__":
    main()
