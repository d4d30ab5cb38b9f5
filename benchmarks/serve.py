"""orm-cache serve under load: hits, misses batched across clients, and a mixed soak.

A head is trained on GSM8K model solutions (../shared/data/gsm8k; synthetic traces where it is
absent) with bundled all-MiniLM-L6-v2; then ``orm-cache serve`` runs as a child process and
clients on 127.0.0.1 (httpx, one thread each) send:

1. all hits, 8 concurrent clients x 64 texts per request: texts/s, latency p50/p99;
2. all hits, 1 client x 1 text per request: latency p50/p99;
3. all misses, 64 concurrent clients x 1 text per request: texts/s, against ``orm-cache
   embed``'s encoder texts/s on the same texts and a per-request baseline (each request's text
   encoded alone, ``--max-batch-texts 1``, as OpenRLHF's serve_rm does), all in this run;
4. a mixed soak (hits, misses, bad requests) for ``--soak-seconds``: status codes, the server's
   RSS after 10k requests and at the end, and after SIGTERM: exit status and every written-back
   vector read back through its checksums.

    python benchmarks/serve.py [--soak-seconds 600] [--device cpu] [--write]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GSM8K, build_model, gsm8k_pointwise, publish, table  # noqa: E402

JSON = {"Content-Type": "application/json"}


def cli(*args) -> str:
    from click.testing import CliRunner

    from orm_cache.cli import cli as main

    r = CliRunner().invoke(main, [str(x) for x in args])
    if r.exit_code:
        raise SystemExit(f"orm-cache {' '.join(map(str, args))} failed:\n{r.output}")
    return r.output


def traces(n_hit: int, n_miss: int) -> tuple[list[dict], list[dict]]:
    """Rows for the store (labelled, grouped) and rows never embedded (prompt + text)."""
    if (GSM8K / "model_solutions_dev.jsonl").exists():
        rows = gsm8k_pointwise()
        random.Random(0).shuffle(rows)
    else:
        rows = [{"group": f"g{i // 4}", "prompt": f"Problem {i // 4}: add {i} and 7.",
                 "text": f"Step 1: {i} + 7 = {i + 7 + (i % 4 > 0)}. " * (1 + i % 9) + f"Answer: {i + 7}",
                 "label": int(i % 4 == 0)} for i in range(n_hit + n_miss)]
    hit, miss = rows[:n_hit], rows[n_hit:n_hit + n_miss]
    return hit, [{"prompt": r["prompt"], "text": r["text"]} for r in miss]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def load(url: str, bodies: list[bytes], clients: int, token: str | None = None, seconds: float | None = None):
    """Send ``bodies`` from ``clients`` threads (each its own connection; round robin over the
    bodies until all are sent, or until ``seconds``); returns (wall seconds, latencies, codes)."""
    import httpx

    lat, codes, lock = [], {}, threading.Lock()
    nxt = iter(range(10**12))
    stop = time.perf_counter() + seconds if seconds else None
    headers = {**JSON, **({"Authorization": f"Bearer {token}"} if token else {})}

    def worker():
        with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
            while True:
                with lock:
                    i = next(nxt)
                if (stop is None and i >= len(bodies)) or (stop is not None and time.perf_counter() > stop):
                    return
                t = time.perf_counter()
                r = c.post("/score", content=bodies[i % len(bodies)])
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, lat, codes


def encoder_calls(url: str, token: str) -> tuple[float, float, float]:
    """(encoder calls, texts embedded, encoder seconds) so far, from the server's /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    return (values.get("orm_cache_batch_texts_count", 0.0), values.get("orm_cache_batch_texts_sum", 0.0),
            values.get("orm_cache_encode_seconds_sum", 0.0))


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(url: str, pid: int, seconds: float, hits: list[dict], token: str) -> dict:
    """Mixed traffic: 3 hit clients (16 rows a request), 1 miss client (a new text each time),
    1 client of bad requests (bad JSON, wrong token, unknown field, oversize text)."""
    import httpx

    stop = time.perf_counter() + seconds
    codes: dict = {}
    count, rss, lock = [0], {}, threading.Lock()
    auth = {**JSON, "Authorization": f"Bearer {token}"}
    hit_bodies = [json.dumps({"rows": hits[i:i + 16]}).encode() for i in range(0, len(hits) - 16, 16)]
    bad = [(b"{nope", auth), (json.dumps({"texts": ["x"]}).encode(), {**JSON, "Authorization": "Bearer wrong"}),
           (json.dumps({"textz": ["x"]}).encode(), auth),
           (json.dumps({"rows": [{"prompt": "p", "text": "y" * 300_000}]}).encode(), auth)]  # over --max-text-chars

    def note(code):
        with lock:
            codes[code] = codes.get(code, 0) + 1
            count[0] += 1
            if count[0] in (10_000, 100_000):
                rss[count[0]] = rss_mib(pid)

    def run(kind):
        with httpx.Client(base_url=url, timeout=300) as c:
            i = 0
            while time.perf_counter() < stop:
                if kind == "hit":
                    r = c.post("/score", content=hit_bodies[i % len(hit_bodies)], headers=auth)
                elif kind == "miss":
                    row = hits[i % len(hits)]
                    new = {"prompt": row.get("prompt"), "text": f"soak {i}: " + row["text"]}  # never seen
                    r = c.post("/score", json={"rows": [new]}, headers={"Authorization": f"Bearer {token}"})
                else:
                    body, headers = bad[i % len(bad)]
                    r = c.post("/score", content=body, headers=headers)
                note(r.status_code)
                i += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in ("hit", "hit", "hit", "miss", "bad")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss["end"] = rss_mib(pid)
    return {"requests": count[0], "codes": codes, "rss": rss}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled-minilm",
                    help="bundled-minilm, tiny-opt, opt-1.3b-arch (random weights, float16 on a GPU) or a directory.")
    ap.add_argument("--hits", type=int, default=3000, help="Texts in the store.")
    ap.add_argument("--misses", type=int, default=512, help="New texts per miss scenario.")
    ap.add_argument("--seconds", type=float, default=15.0, help="Length of the all-hits run.")
    ap.add_argument("--soak-seconds", type=float, default=60.0)
    ap.add_argument("--also-wait-ms", type=float, nargs="*", default=[],
                    help="Also measure batched misses with these --max-wait-ms values.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", action="store_true", help="Write the tables into RESULTS.md.")
    args = ap.parse_args()
    model_name = {"bundled-minilm": "bundled all-MiniLM-L6-v2"}.get(args.model, args.model)

    from orm_cache.encode.embedder import embed_texts
    from orm_cache.encode.model import Encoder
    from orm_cache.head import Head
    from orm_cache.pipeline.reward import RewardCache
    from orm_cache.store import VectorStore
    from orm_cache.config import EncoderSpec, RunSpec
    from orm_cache.testing import ServerProcess

    work = Path(tempfile.mkdtemp(prefix="orm-serve-bench-"))
    try:
        hits, misses = traces(args.hits, args.misses * 3)
        data = work / "data"
        data.mkdir()
        with open(data / "train.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in hits)
        cache, head = work / "cache", work / "h.pt"
        t = time.perf_counter()
        args.model = build_model(args.model, work)
        cli("embed", "--data", data, "--split", "train", "--model", args.model, "--cache-dir", cache, "-q",
            "--device", args.device)
        cli("fit-head", "--data", data, "--split", "train", "--model", args.model, "--cache-dir", cache, "--out", head,
            "--solver", "lbfgs", "--eval-split", "", "-q")
        print(f"store of {len(hits):,} texts and a head in {time.perf_counter() - t:.0f}s")
        token = "bench-token"
        (work / "token").write_text(token)
        rows_out = []

        common = ["--head", head, "--device", args.device, "--token-file", work / "token"]
        # 1-2: hits
        with ServerProcess(*common, "--cache-dir", cache, "--no-write-back") as s:
            bodies = [json.dumps({"rows": hits[i:i + 64]}).encode() for i in range(0, len(hits) - 64, 64)]
            load(s.url, bodies[:8], 8, token)  # warm-up
            wall, lat, codes = load(s.url, bodies, 8, token, seconds=args.seconds)
            n = sum(codes.values()) * 64
            rows_out.append(["all hits, 8 clients x 64 texts", f"{n / wall:,.0f}", f"{1000 * percentile(lat, .5):.1f}",
                             f"{1000 * percentile(lat, .99):.1f}", "≥ 10,000 texts/s, p99 ≤ 50 ms", str(codes)])
            one = [json.dumps({"rows": [r]}).encode() for r in hits[:2000]]
            wall, lat, codes = load(s.url, one, 1, token)
            rows_out.append(["all hits, 1 client x 1 text", f"{len(one) / wall:,.0f}",
                             f"{1000 * percentile(lat, .5):.2f}", f"{1000 * percentile(lat, .99):.2f}", "p50 ≤ 3 ms",
                             str(codes)])
        # 3: misses, batched vs per request vs embed, the same texts each time on a copy of the store
        bodies = [json.dumps({"rows": [r]}).encode() for r in misses[:args.misses]]
        miss_rates = {}
        variants = [("batched", [])] + [(f"batched, --max-wait-ms {w}", ["--max-wait-ms", str(w)])
                                        for w in args.also_wait_ms] + [("per request", ["--max-batch-texts", "1"])]
        for name, extra in variants:
            copy = work / f"cache-{len(miss_rates)}"
            shutil.copytree(cache, copy)
            with ServerProcess(*common, "--cache-dir", copy, "--preload", *extra) as s:
                load(s.url, [json.dumps({"rows": [r]}).encode() for r in misses[-8:]], 8, token)  # warm-up misses
                before = encoder_calls(s.url, token)
                wall, lat, codes = load(s.url, bodies, 64, token)
                calls, texts, seconds = (a - b for a, b in zip(encoder_calls(s.url, token), before))
                miss_rates[name] = len(bodies) / wall
                rows_out.append([f"all misses, 64 clients x 1 text ({name}): {texts / max(calls, 1):.1f} texts and "
                                 f"{1000 * seconds / max(calls, 1):.0f} ms per encoder call, encoder busy "
                                 f"{seconds / wall:.0%}", f"{miss_rates[name]:,.1f}",
                                 f"{1000 * percentile(lat, .5):.0f}", f"{1000 * percentile(lat, .99):.0f}", "", str(codes)])
        h = Head.load(head)
        rc = RewardCache(h, work / "cache-embed", args.device)
        t_rows = rc.rows(misses[:args.misses])
        enc = Encoder(EncoderSpec(**h.meta["encoder_spec"]).with_feature(h.feature), args.device)
        enc.load()
        report = embed_texts(list(zip(t_rows.keys, t_rows.texts, t_rows.starts, t_rows.special)), enc,
                             RunSpec(cache_dir=str(work / "cache-embed"), device=args.device, quiet=True))
        embed_rate = report.texts_per_s
        rows_out.append(["orm-cache embed, the same texts (encoder time)", f"{embed_rate:,.1f}", "", "", "", ""])
        ratio = (f"batched misses = {miss_rates['batched'] / embed_rate:.0%} of embed's texts/s (target ≥ 80%); "
                 f"{miss_rates['batched'] / miss_rates['per request']:.2f}x the per-request baseline")
        parts = [f"### orm-cache serve ({model_name}, {args.device}, GSM8K traces, clients on 127.0.0.1)",
                 table(["scenario", "texts/s", "p50 ms", "p99 ms", "target", "status codes"], rows_out), ratio]
        if args.soak_seconds > 0:  # 4: soak
            copy = work / "cache-soak"
            shutil.copytree(cache, copy)
            with ServerProcess(*common, "--cache-dir", copy) as s:
                result = soak(s.url, s.proc.pid, args.soak_seconds, hits, token)
                code = s.stop()
            store = VectorStore(copy / "vectors" / h.fingerprint[:16], h.fingerprint)
            readable = len(store.vectors(list(store.keys()), h.feature))  # every block checked against its checksum
            fives = sum(v for k, v in result["codes"].items() if k >= 500)
            rss = result["rss"]
            parts.append(table(["soak s", "requests", "status codes", "5xx", "RSS MiB @10k", "RSS MiB @100k",
                                "RSS MiB end", "exit after SIGTERM", "vectors readable after"],
                               [[f"{args.soak_seconds:.0f}", f"{result['requests']:,}",
                                 str(dict(sorted(result["codes"].items()))), fives,
                                 f"{rss.get(10_000, float('nan')):.0f}", f"{rss.get(100_000, float('nan')):.0f}",
                                 f"{rss['end']:.0f}", code, f"{readable:,} of {len(store):,}"]]))
        body = "\n\n".join(parts)
        publish(f"serve-{args.device}", body, args.write)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
