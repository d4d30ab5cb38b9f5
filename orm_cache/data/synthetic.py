"""A seeded synthetic data set of arithmetic word problems with step-by-step solutions.

Each problem is a short computation chain (``r1 = a * b``, ``r2 = r1 + c`` …) rendered as a
question and numbered steps ending in a final answer. Incorrect traces are the correct chain with
one realistic fault, executed forward so the error propagates as a model's would:

* ``slip``      a calculation slip in one step (``6 * 7 = 43``); later steps use the wrong value;
* ``wrong_op``  one step applies the wrong operation (adds where it should multiply);
* ``dropped``   one intermediate step is skipped; later steps use the operand it would have changed;
* ``misread``   one quantity from the question is copied wrongly into a step;
* ``unsupported`` every step is right but the stated final answer does not follow from them.

Phrasing (step wording, the final-answer line, step count) is drawn independently of the label,
so that length and wording carry no signal: a fault can only be seen in the numbers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

FAULTS = ("slip", "wrong_op", "dropped", "misread", "unsupported")
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Isla", "Jonas", "Kemi", "Liam",
         "Maya", "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara"]
OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x / y}


@dataclass
class Step:
    op: str
    args: tuple  # each an int literal name "q:<name>" (question quantity) or "s:<i>" (step result)
    phrase: str  # wording before the equation, e.g. "The boxes hold"


def _family_collect(rng):
    name, thing = rng.choice(NAMES), rng.choice(["marbles", "stickers", "shells", "cards", "stamps"])
    q = {"a": rng.randint(5, 60), "b": rng.randint(2, 9), "c": rng.randint(3, 15), "d": rng.randint(2, 20)}
    text = (f"{name} has {q['a']} {thing}. {name} buys {q['b']} boxes with {q['c']} {thing} in each box, "
            f"then gives {q['d']} {thing} to a friend. How many {thing} does {name} have now?")
    steps = [Step("*", ("q:b", "q:c"), f"The {q['b']} boxes hold"),
             Step("+", ("q:a", "s:0"), f"Together with the {thing} {name} already had, that is"),
             Step("-", ("s:1", "q:d"), f"After giving some away, {name} has")]
    return text, q, steps, thing


def _family_shop(rng):
    name, item = rng.choice(NAMES), rng.choice(["notebooks", "pens", "mugs", "plants", "scarves"])
    q = {"n": rng.randint(2, 9), "p": rng.randint(3, 25), "f": rng.randint(2, 9)}
    q["bill"] = rng.choice([50, 100, 200, 500])
    while q["n"] * q["p"] + q["f"] >= q["bill"]:
        q["bill"] *= 2
    text = (f"{name} buys {q['n']} {item} at ${q['p']} each and pays a ${q['f']} delivery fee. "
            f"{name} pays with a ${q['bill']} bill. How much change does {name} get?")
    steps = [Step("*", ("q:n", "q:p"), f"The {item} cost"),
             Step("+", ("s:0", "q:f"), "With the delivery fee the total is"),
             Step("-", ("q:bill", "s:1"), "The change is")]
    return text, q, steps, "dollars"


def _family_travel(rng):
    vehicle = rng.choice(["train", "bus", "car", "cyclist", "boat"])
    q = {"s": rng.randint(8, 80), "h": rng.randint(2, 7), "m": rng.randint(5, 60)}
    text = (f"A {vehicle} travels at {q['s']} miles per hour for {q['h']} hours, then goes {q['m']} more "
            f"miles. How many miles does the {vehicle} travel in total?")
    steps = [Step("*", ("q:s", "q:h"), f"In {q['h']} hours the {vehicle} covers"),
             Step("+", ("s:0", "q:m"), "Adding the extra distance gives")]
    return text, q, steps, "miles"


def _family_share(rng):
    name = rng.choice(NAMES)
    k = rng.randint(2, 8)
    per = rng.randint(2, 12)
    c = rng.choice([6, 8, 10, 12, 24])
    a = None
    for trays in range(2, 40):  # trays * c must be divisible by k
        if trays * c % k == 0 and trays * c // k >= per // 2:
            a = trays
            break
    q = {"a": a, "c": c, "k": k, "e": rng.randint(1, 3)}
    text = (f"{name} bakes {q['a']} trays of {q['c']} cookies and shares them equally among {q['k']} "
            f"friends. Each friend then eats {q['e']} cookies. How many cookies does each friend have left?")
    steps = [Step("*", ("q:a", "q:c"), f"{name} bakes"),
             Step("/", ("s:0", "q:k"), "Each friend gets"),
             Step("-", ("s:1", "q:e"), "After eating some, each friend has")]
    return text, q, steps, "cookies"


def _family_save(rng):
    name, thing = rng.choice(NAMES), rng.choice(["bike", "game", "jacket", "guitar", "tent"])
    q = {"a": rng.randint(5, 40), "w": rng.randint(3, 12), "g": rng.randint(10, 60)}
    q["s"] = rng.randint(10, q["a"] * q["w"] + q["g"] - 5)
    text = (f"{name} saves ${q['a']} every week for {q['w']} weeks and gets ${q['g']} as a gift. "
            f"Then {name} spends ${q['s']} on a {thing}. How much money does {name} have left?")
    steps = [Step("*", ("q:a", "q:w"), f"In {q['w']} weeks {name} saves"),
             Step("+", ("s:0", "q:g"), "With the gift that is"),
             Step("-", ("s:1", "q:s"), f"After buying the {thing}, {name} has")]
    return text, q, steps, "dollars"


def _family_garden(rng):
    q = {"r": rng.randint(3, 15), "c": rng.randint(4, 20), "d": rng.randint(1, 12), "n": rng.randint(2, 30)}
    plant = rng.choice(["tomato plants", "rose bushes", "tulips", "pepper plants", "sunflowers"])
    text = (f"A garden has {q['r']} rows of {q['c']} {plant}. {q['d']} of them die and {q['n']} new ones "
            f"are planted. How many {plant} are in the garden now?")
    steps = [Step("*", ("q:r", "q:c"), "At first there are"),
             Step("-", ("s:0", "q:d"), "After some die there are"),
             Step("+", ("s:1", "q:n"), "With the new ones there are")]
    return text, q, steps, plant.split()[-1]


FAMILIES = [_family_collect, _family_shop, _family_travel, _family_share, _family_save, _family_garden]


def _fmt(x) -> str:
    if isinstance(x, float):
        if abs(x - round(x)) < 1e-9:
            return str(int(round(x)))
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return str(x)


def _execute(q: dict, steps: list[Step], fault: str | None, at: int, rng) -> tuple[list, object]:
    """Run the chain with an optional fault at step ``at``; return rendered equations and answer."""
    results, lines = [], []
    skipped = None
    for i, st in enumerate(steps):
        vals = []
        for a in st.args:
            kind, ref = a.split(":")
            if kind == "q":
                v = q[ref]
                if fault == "misread" and i == at and a == _misread_arg(steps[at]):
                    v = _misread_value(v, rng)
            else:
                v = results[int(ref)]
                if skipped is not None and int(ref) == skipped:
                    v = _dropped_value(steps[skipped], q, results)
            vals.append(v)
        op = st.op
        if fault == "wrong_op" and i == at:
            op = {"*": "+", "+": "*", "-": "+", "/": "*"}[op]
        r = OPS[op](*vals)
        if isinstance(r, float) and abs(r - round(r)) < 1e-9:
            r = int(round(r))
        if fault == "slip" and i == at:
            r = r + rng.choice([-10, -2, -1, 1, 2, 10]) if not isinstance(r, float) else r + 1
        if fault == "dropped" and i == at:
            skipped = i
            results.append(None)
            continue
        results.append(r)
        lines.append((st.phrase, vals, op, r))
    return lines, results[-1]


def _misread_arg(step: Step) -> str:
    return next(a for a in step.args if a.startswith("q:"))


def _misread_value(v: int, rng) -> int:
    s = str(v)
    if len(s) >= 2 and s[0] != s[1] and rng.random() < 0.5:
        return int(s[1] + s[0])  # swapped digits
    return v + rng.choice([-3, -2, -1, 1, 2, 3]) if v > 3 else v + rng.choice([1, 2, 3])


def _dropped_value(step: Step, q: dict, results: list):
    """What a solver that skipped ``step`` carries forward: the step's first operand."""
    kind, ref = step.args[0].split(":")
    return q[ref] if kind == "q" else results[int(ref)]


def _render(lines, answer, unit: str, rng, style: int) -> str:
    out = []
    for n, (phrase, vals, op, r) in enumerate(lines, 1):
        eq = f"{_fmt(vals[0])} {op} {_fmt(vals[1])} = {_fmt(r)}"
        prefix = f"Step {n}: " if style in (0, 1) else ""
        out.append(f"{prefix}{phrase} {eq} {unit}." if style != 1 else f"{prefix}{phrase} {eq}.")
    final = [f"Final answer: {_fmt(answer)}", f"The answer is {_fmt(answer)}.", f"#### {_fmt(answer)}"][rng.randrange(3)]
    return "\n".join(out + [final])


def make_problem(rng: random.Random, n_candidates: int = 8, p_two_correct: float = 0.5):
    """One problem and its candidate traces: ``(question, [(solution, label, fault)])``."""
    family = rng.choice(FAMILIES)
    question, q, steps, unit = family(rng)
    n_correct = 2 if rng.random() < p_two_correct else 1
    cands, seen = [], set()
    tries = 0
    while len(cands) < n_candidates and tries < 200:
        tries += 1
        fault = None if len(cands) < n_correct else rng.choice(FAULTS)
        at = rng.randrange(len(steps) - 1) if fault == "dropped" else rng.randrange(len(steps))
        if fault == "misread" and not any(a.startswith("q:") for a in steps[at].args):
            continue
        lines, answer = _execute(q, steps, fault if fault != "unsupported" else None, at, rng)
        correct_answer = _execute(q, steps, None, 0, rng)[1]
        if fault == "unsupported":
            answer = lines[-2][3] if len(lines) > 1 and rng.random() < 0.5 else answer + rng.choice([-5, -1, 1, 3, 10])
        if fault is not None and abs(answer - correct_answer) < 1e-9:
            continue  # the fault cancelled out: not an incorrect trace
        text = _render(lines, answer, unit, rng, style=rng.randrange(3))
        if text in seen:
            continue
        seen.add(text)
        cands.append((text, int(fault is None), fault or "none"))
    rng.shuffle(cands)
    return question, cands


def make_pointwise(n_problems: int, seed: int, n_candidates: int = 8, id_prefix: str = "p") -> list[dict]:
    """Pointwise rows ``{group, prompt, text, label, fault}`` for ``n_problems`` problems."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_problems):
        question, cands = make_problem(rng, n_candidates)
        for text, label, fault in cands:
            rows.append({"group": f"{id_prefix}{i:05d}", "prompt": question, "text": text,
                         "label": label, "fault": fault})
    return rows


def write_dataset(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0,
                  n_candidates: int = 8) -> dict:
    """Write ``pointwise/<split>.jsonl`` and ``pairwise/<split>.jsonl`` under ``out_dir``.

    The pairwise form is built from the pointwise one exactly as ``embed`` would (8 negatives per
    positive for train, 4 otherwise, seeded, within problem). Returns counts per split.
    """
    from .spec import DataSpec
    from ..outputs import AtomicOutputs, OutputError
    from .ingest import load_split

    sizes = sizes or {"train": 400, "validation": 100, "test": 200}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file; give a directory")
    counts = {}
    with AtomicOutputs() as outputs:  # all six files appear together, or none is replaced
        for k, (split, n) in enumerate(sizes.items()):
            rows = make_pointwise(n, seed * 1000 + k, n_candidates, id_prefix=f"{split[:2]}")
            pw = outputs.path(out / "pointwise" / f"{split}.jsonl")
            with open(pw, "w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
            data = load_split(DataSpec(data=str(pw), split=split))
            by_key = {}
            for i, key in enumerate(data.keys):
                by_key.setdefault(key, rows[i])
            with open(outputs.path(out / "pairwise" / f"{split}.jsonl"), "w") as f:
                for c, r in zip(data.pairs.chosen, data.pairs.rejected):
                    rc, rr = by_key[c], by_key[r]
                    f.write(json.dumps({"group": rc["group"], "prompt": rc["prompt"], "chosen": rc["text"],
                                        "rejected": rr["text"],
                                        "meta": {"group": rc["group"], "rejected_fault": rr["fault"]}}) + "\n")
            counts[split] = {"problems": n, "traces": len(rows), "correct": int(sum(r["label"] for r in rows)),
                             "pairs": len(data.pairs)}
    return counts
