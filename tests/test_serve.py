"""orm-cache serve: real HTTP on 127.0.0.1 with real client libraries (httpx, requests), a real
server process (``orm-cache serve``), a real head on the tiny OPT. No mocks."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import ok, write_jsonl, write_pointwise_splits
from orm_cache.testing import ServerProcess

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_opt_dir):
    d = tmp_path_factory.mktemp("serve")
    model, cache, head = d / "model", d / "cache", d / "h.pt"
    shutil.copytree(tiny_opt_dir, model)
    data = write_pointwise_splits(d / "data")
    for split in ("train", "validation", "test"):
        ok("embed", "--data", data, "--split", split, "--model", model, "--cache-dir", cache, "-q")
    ok("fit-head", "--data", data, "--model", model, "--cache-dir", cache, "--out", head, "--solver", "lbfgs", "-q")
    (d / "token").write_text(TOKEN + "\n")
    return d


def fresh_cache(trained, tmp_path):
    """A copy of the trained store (tests that write back do not disturb the others)."""
    shutil.copytree(trained / "cache", tmp_path / "cache")
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def server(trained):
    with ServerProcess("--head", trained / "h.pt", "--cache-dir", trained / "cache", "--token-file",
                       trained / "token", "--no-write-back", "--max-texts", "64", "--max-text-chars", "5000",
                       "--max-body-mb", "0.05") as s:
        yield s


def client(server, token=TOKEN):
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"} if token else {},
                        timeout=120)


def rows(trained, split="test"):
    return [json.loads(line) for line in open(trained / "data" / f"{split}.jsonl")]


def test_hits_are_the_cli_scores_bit_for_bit_in_every_shape(server, trained, tmp_path):
    out = tmp_path / "scored.jsonl"
    ok("score", "--head", trained / "h.pt", "--input", trained / "data" / "test.jsonl", "--output", out,
       "--cache-dir", trained / "cache", "-q")
    cli_scores = [json.loads(line)["score"] for line in open(out)]
    src = rows(trained)
    with client(server) as c:
        by_rows = c.post("/score", json={"rows": src[:32]}).json()
        by_texts = c.post("/score", json={"texts": [r["text"] for r in src[:32]]}).json()
        # a one-exchange conversation is the template's prompt and response: the same text as the strings
        conv = c.post("/score", json={"texts": [[{"role": "user", "content": "Q?"},
                                                 {"role": "assistant", "content": src[0]["text"]}]]}).json()
        strings = c.post("/score", json={"texts": [src[0]["text"]], "prompts": ["Q?"]}).json()
        rows_prompt = c.post("/score", json={"rows": [{"prompt": "Q?", "text": src[0]["text"]}]}).json()
    assert by_rows["scores"] == cli_scores[:len(by_rows["scores"])] and by_rows["hits"] == 24
    assert by_texts["scores"] == by_rows["scores"]
    assert conv["scores"] == strings["scores"] == rows_prompt["scores"]


def test_misses_batch_then_hit_equal_live_scores(trained, tmp_path):
    from orm_cache.pipeline.live import LiveScorer

    cache = fresh_cache(trained, tmp_path)
    texts = [f"Problem {i}: a new trace, {i} + {i} = {2 * i}. Answer: {2 * i}" for i in range(24)]
    with ServerProcess("--head", trained / "h.pt", "--cache-dir", cache, "--max-wait-ms", "50") as s:
        with ThreadPoolExecutor(24) as pool, httpx.Client(base_url=s.url, timeout=120) as c:
            first = list(pool.map(lambda t: c.post("/score", json={"texts": [t, t]}).json(), texts))
            again = c.post("/score", json={"texts": texts}).json()
            metrics = c.get("/metrics").text
        assert s.stop() == 0
    assert all(r["misses"] == 2 and r["scores"][0] == r["scores"][1] for r in first)  # one text twice: one miss
    assert again["hits"] == 24 and again["scores"] == [r["scores"][0] for r in first]  # a miss's score is its hit's
    live = LiveScorer(str(trained / "h.pt"), device="cpu").score(texts)
    np.testing.assert_allclose(again["scores"], live, rtol=1e-5, atol=1e-5)
    batches = float(next(x for x in metrics.splitlines() if x.startswith("orm_cache_batch_texts_count")).split()[1])
    assert 1 <= batches < 24  # 24 concurrent requests' misses shared encoder calls
    # written back: the next process answers them from the store with no model at all
    shutil.rmtree(tmp_path / "model", ignore_errors=True)
    out = tmp_path / "o.jsonl"
    r = ok("score", "--head", trained / "h.pt", "--input", write_jsonl(tmp_path / "n.jsonl", [{"text": t} for t in texts]),
           "--output", out, "--cache-dir", cache)
    assert "0 embedded now (no model loaded)" in r.output
    assert [json.loads(line)["score"] for line in open(out)] == again["scores"]


def test_openrlhf_protocol_as_its_client_sends_it(server, trained):
    requests = pytest.importorskip("requests")
    src = rows(trained)
    data = {"query": [r["text"] for r in src[:4]], "prompts": ["p"] * 4, "labels": [""] * 4}
    # openrlhf/utils/remote_rm_utils.py: requests.post(url, json=data, headers={"Content-Type": ...}).json()["rewards"]
    response = requests.post(server.url + "/get_reward", json=data, timeout=180,
                             headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    response.raise_for_status()
    body = response.json()
    with client(server) as c:
        expected = c.post("/score", json={"texts": data["query"]}).json()["scores"]
    assert body["rewards"] == body["scores"] == expected
    assert body["extra_logs"]["cache_hit"] == [1.0] * 4
    bad = requests.post(server.url + "/get_reward", json={"query": ["q"], "prompts": [1]},
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert bad.status_code == 400 and "prompts" in bad.json()["error"]


def test_rank_orders_candidates_best_first(server, trained):
    src = rows(trained)[:4]
    with client(server) as c:
        r = c.post("/rank", json={"candidates": [x["text"] for x in src]}).json()
    s = np.array(r["scores"])
    assert r["order"] == np.argsort(-s, kind="stable").tolist() and r["best"] == r["order"][0]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": "Basic " + TOKEN}])
def test_wrong_or_missing_token_is_401(server, headers):
    r = httpx.post(server.url + "/score", json={"texts": ["x"]}, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["error"]
    assert httpx.get(server.url + "/metrics", headers=headers).status_code == 401
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # probes need no token
    assert httpx.get(server.url + "/ready").status_code == 200


@pytest.mark.parametrize("body,status,says", [
    (b"{not json", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"texts": "one string"}).encode(), 400, "lists"),
    (json.dumps({"text": ["a"]}).encode(), 400, "unknown field"),
    (json.dumps({"texts": [None]}).encode(), 400, "text 0"),
    (json.dumps({"texts": [{"role": "user", "content": "hi"}]}).encode(), 400, "conversation"),
    (json.dumps({"texts": [[{"role": "user"}]]}).encode(), 400, "content"),
    (json.dumps({"texts": ["a", "b"], "prompts": ["p"]}).encode(), 400, "1 prompts for 2 texts"),
    (json.dumps({"rows": [{"label": 1}]}).encode(), 400, "missing"),
    (json.dumps({"texts": ["x"] * 65}).encode(), 413, "--max-texts"),
    (json.dumps({"texts": ["x" * 6000]}).encode(), 413, "--max-text-chars"),
    (json.dumps({"texts": ["x " * 40_000]}).encode(), 413, "--max-body-mb"),
    (b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "not JSON"),  # nesting deeper than the parser goes
])
def test_malformed_requests_get_one_line_4xx(server, body, status, says):
    with client(server) as c:
        r = c.post("/score", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert says in error and "\n" not in error and "Traceback" not in r.text
        assert c.post("/score", json={"texts": ["still fine"]}).status_code == 200  # the server carries on


def test_chunked_oversize_body_is_refused(server):
    def chunks():
        for _ in range(200):
            yield b"x" * 1024

    with client(server) as c:
        r = c.post("/score", content=chunks())
    assert r.status_code == 413


def test_a_client_that_disconnects_mid_request_harms_nothing(trained, tmp_path):
    from orm_cache.store import VectorStore
    from orm_cache.head import Head
    from orm_cache.text.key import trace_key

    cache = fresh_cache(trained, tmp_path)
    with ServerProcess("--head", trained / "h.pt", "--cache-dir", cache) as s:
        host, port = s.url.split("//")[1].rsplit(":", 1)
        # half a body, then gone
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 500\r\n\r\n{\"texts\": [\"half")
        # a whole request with a miss, gone before the answer
        body = json.dumps({"texts": ["a text whose client left"]}).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.5)
        with httpx.Client(base_url=s.url, timeout=120) as c:
            assert c.post("/score", json={"texts": ["after them"]}).status_code == 200
        assert s.stop() == 0
    h = Head.load(trained / "h.pt")
    store = VectorStore(cache / "vectors" / h.fingerprint[:16], h.fingerprint)
    for text in ("a text whose client left", "after them"):
        assert trace_key(text, True) in store  # embedded and written back all the same


def test_sigterm_under_load_answers_in_flight_and_loses_nothing(trained, tmp_path):
    from orm_cache.head import Head
    from orm_cache.store import VectorStore
    from orm_cache.text.key import trace_key

    cache = fresh_cache(trained, tmp_path)
    answered, refused = {}, []
    with ServerProcess("--head", trained / "h.pt", "--cache-dir", cache, "--preload") as s:
        def call(i):
            text = f"load {i}: " + "step. " * (i % 7 + 1)
            try:
                r = httpx.post(s.url + "/score", json={"texts": [text]}, timeout=120)
                if r.status_code == 200:
                    answered[text] = r.json()["scores"][0]
                else:
                    refused.append(r.status_code)
            except httpx.TransportError:  # not accepted: the server had stopped listening
                refused.append(None)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(60)]
        for t in threads[:40]:
            t.start()
        time.sleep(0.3)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads[40:]:
            t.start()
        for t in threads:
            t.join()
        code = s.proc.wait(60)
    assert code == 0, "\n".join(s.lines[-10:])
    assert answered and all(x in (None, 503) for x in refused), (len(answered), refused)
    h = Head.load(trained / "h.pt")
    store = VectorStore(cache / "vectors" / h.fingerprint[:16], h.fingerprint)
    keys = [trace_key(t, True) for t in answered]
    assert not store.missing(keys), "an answered miss was not written back"
    scores = h.score(store.vectors(keys, h.feature))
    assert scores.tolist() == list(answered.values())  # what was answered is what is stored


def test_full_queue_gets_503_with_retry_after(trained, tmp_path):
    cache = fresh_cache(trained, tmp_path)
    with ServerProcess("--head", trained / "h.pt", "--cache-dir", cache, "--max-queue", "2", "--max-wait-ms", "200",
                       "--no-write-back") as s:
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda i: httpx.post(s.url + "/score", json={"texts": [f"q{i}a", f"q{i}b"]},
                                                     timeout=120), range(12)))
    codes = [r.status_code for r in got]
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    r503 = next(r for r in got if r.status_code == 503)
    assert r503.headers["retry-after"] == "1" and "--max-queue" in r503.json()["error"]


def test_non_loopback_without_token_is_refused(trained):
    from conftest import run

    r = run("serve", "--head", trained / "h.pt", "--cache-dir", trained / "cache", "--host", "0.0.0.0", "--port", "0",
            env={"ORM_CACHE_TOKEN": ""})
    assert r.exit_code != 0 and "token" in r.output and "Traceback" not in r.output
    r = run("serve", "--head", trained / "h.pt", "--cache-dir", trained / "cache", "--token-file",
            trained / "nonexistent")
    assert r.exit_code != 0 and "--token-file" in r.output


def test_reward_function_local_and_remote_agree(server, trained, tmp_path):
    from orm_cache.pipeline.reward import OrmReward

    src = rows(trained)[:6]
    completions = [r["text"] for r in src] + ["a completion never seen before"]
    prompts = ["Q?"] * len(completions)
    local = OrmReward(trained / "h.pt", cache_dir=fresh_cache(trained, tmp_path), device="cpu")
    remote = OrmReward(url=server.url, token=TOKEN)
    assert local.__name__ == "orm_cache"
    a = local(prompts=prompts, completions=completions, completion_ids=[[1]] * 7)  # TRL passes more keywords
    b = remote(prompts=prompts, completions=completions)
    # misses embedded in other batches (other padding): equal within verify's tolerance
    assert len(a) == 7 and all(isinstance(x, float) for x in a)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert local(prompts=prompts, completions=completions) == a  # now hits: the same bits
    conv_p = [[{"role": "user", "content": "Q?"}]]
    conv_c = [[{"role": "assistant", "content": completions[0]}]]
    assert local(prompts=conv_p, completions=conv_c) == a[:1]
    assert remote(prompts=conv_p, completions=conv_c) == b[:1]
    with pytest.raises(RuntimeError, match="401"):
        OrmReward(url=server.url, token="wrong")(prompts=prompts, completions=completions)
    local.close()
    remote.close()


def test_trl_grpo_trainer_trains_one_step_on_orm_cache_rewards(trained, tmp_path):
    """TRL's GRPOTrainer, a tiny policy on CPU, orm-cache (in-process) as its reward function."""
    pytest.importorskip("trl", reason="trl is not installed (pip install trl)")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from orm_cache.pipeline.reward import OrmReward

    calls = []

    class Recording(OrmReward):
        def __call__(self, prompts=None, completions=None, **kw):
            out = super().__call__(prompts=prompts, completions=completions, **kw)
            calls.append((list(prompts), list(completions), out))
            return out

    policy = AutoModelForCausalLM.from_pretrained(trained / "model")
    tok = AutoTokenizer.from_pretrained(trained / "model")
    data = Dataset.from_list([{"prompt": f"Problem {i}: add {i} and 3."} for i in range(4)])
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, max_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                      logging_steps=1, bf16=False)
    reward = Recording(trained / "h.pt", cache_dir=fresh_cache(trained, tmp_path), device="cpu")
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer.train()
    assert calls, "the reward function was never called"
    prompts, completions, scores = calls[0]
    assert len(scores) == len(completions) and all(np.isfinite(scores))
    assert scores == reward(prompts=prompts, completions=completions)  # the same texts: hits, the same bits
    assert any(not torch_equal(before[n], p) for n, p in policy.named_parameters()), "no parameter moved"
    logged = trainer.state.log_history[0]
    assert any("orm_cache" in k for k in logged), sorted(logged)  # TRL logs it under the function's __name__


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _children(pid: int) -> list[int]:
    out = []
    for task in (__import__("pathlib").Path(f"/proc/{pid}/task")).iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def test_an_encoder_that_dies_or_cannot_load_costs_one_batch_not_the_server(trained, tmp_path):
    import os

    cache = fresh_cache(trained, tmp_path)
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    # the head's encoder is rebuilt from its recorded model path: point a copy of the head at a model we can delete
    import torch

    ckpt = torch.load(trained / "h.pt", weights_only=False)
    ckpt["orm_cache"]["encoder_spec"]["model"] = str(model)
    torch.save(ckpt, tmp_path / "h.pt")
    hit = rows(trained)[0]["text"]
    with ServerProcess("--head", tmp_path / "h.pt", "--cache-dir", cache, "--preload") as s, \
            httpx.Client(base_url=s.url, timeout=120) as c:
        assert c.post("/score", json={"texts": ["first miss"]}).status_code == 200
        for child in _children(s.proc.pid):
            os.kill(child, signal.SIGKILL)  # the encoder process (and its resource tracker) killed
        time.sleep(0.5)
        r = c.post("/score", json={"texts": ["second miss"]})
        assert r.status_code == 500 and "encoder process died" in r.json()["error"], r.text
        shutil.rmtree(model)  # the new encoder process cannot load the weights now
        r = c.post("/score", json={"texts": ["third miss"]})
        assert r.status_code == 500 and "\n" not in r.json()["error"] and "Traceback" not in r.text, r.text
        assert c.post("/score", json={"texts": [hit]}).json()["hits"] == 1  # hits need no model: still answered
        assert c.get("/health").status_code == 200
        assert s.stop() == 0


def test_unknown_paths_and_methods_answer_json(server):
    with client(server) as c:
        r = c.get("/nope")
        assert r.status_code == 404 and "/nope" in r.json()["error"]
        r = c.get("/score")
        assert r.status_code == 405 and "GET /score" in r.json()["error"]


def test_a_body_that_never_arrives_gets_408_and_frees_its_slot(trained):
    with ServerProcess("--head", trained / "h.pt", "--cache-dir", trained / "cache", "--no-write-back",
                       "--body-timeout", "1") as s:
        host, port = s.url.split("//")[1].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"texts\"")
            sock.settimeout(10)
            answer = ""
            while "}" not in answer:  # headers and body may come in two packets
                chunk = sock.recv(4096).decode()
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith("HTTP/1.1 408") and "--body-timeout" in answer


@pytest.fixture(scope="module")
def response_head(tmp_path_factory, tiny_opt_dir):
    """A head that pools the response only (response_mean), trained on prompts joined to responses."""
    d = tmp_path_factory.mktemp("rm")
    data = write_pointwise_splits(d / "data", transform=lambda rows: [
        {**r, "prompt": r["text"].split(". ")[0], "text": ". ".join(r["text"].split(". ")[1:])} for r in rows])
    for split in ("train", "validation", "test"):
        ok("embed", "--data", data, "--split", split, "--model", tiny_opt_dir, "--cache-dir", d / "cache",
           "--pooling", "response_mean", "-q")
    ok("fit-head", "--data", data, "--model", tiny_opt_dir, "--cache-dir", d / "cache", "--out", d / "h.pt",
       "--solver", "lbfgs", "--pooling", "response_mean", "-q")
    return d


@pytest.mark.parametrize("write_back", [True, False])
def test_one_text_split_two_ways_is_refused_not_answered_with_the_other_splits_score(response_head, tmp_path,
                                                                                     write_back):
    """Under a response-pooling head, "A" + "B\n\nC" and "A\n\nB" + "C" are one text (one key) whose
    responses start elsewhere: the second must not get the first's score, from memory, the queue or
    the store."""
    shutil.copytree(response_head / "cache", tmp_path / "cache")
    extra = [] if write_back else ["--no-write-back"]
    with ServerProcess("--head", response_head / "h.pt", "--cache-dir", tmp_path / "cache", *extra) as s, \
            httpx.Client(base_url=s.url, timeout=120) as c:
        first = c.post("/score", json={"texts": ["B\n\nC"], "prompts": ["A"]})
        assert first.status_code == 200 and first.json()["misses"] == 1
        other = c.post("/score", json={"texts": ["C"], "prompts": ["A\n\nB"]})  # in memory (not yet in a shard)
        assert other.status_code == 409 and "split" in other.json()["error"], other.text
        both = c.post("/score", json={"texts": ["B\n\nC", "C"], "prompts": ["new A", "new A\n\nB"]})
        assert both.status_code == 409  # within one request
        for none in (None, ""):  # an empty prompt is no prompt: where the response starts is not known
            r = c.post("/score", json={"texts": ["a bare text"], "prompts": [none]})
            assert r.status_code == 400 and "no prompt" in r.json()["error"], r.text
        again = c.post("/score", json={"texts": ["B\n\nC"], "prompts": ["A"]}).json()
        assert again["scores"] == first.json()["scores"] and again["hits"] == 1  # the first split still answers
        if write_back:
            assert s.stop() == 0
            with ServerProcess("--head", response_head / "h.pt", "--cache-dir", tmp_path / "cache") as s2, \
                    httpx.Client(base_url=s2.url, timeout=120) as c2:  # now from the store
                r = c2.post("/score", json={"texts": ["C"], "prompts": ["A\n\nB"]})
                assert r.status_code == 409, r.text


def test_write_back_that_fails_still_answers_then_exits_nonzero(trained, tmp_path):
    """A store that cannot take a shard (here: files limited to 4 KiB) costs the write-back, not
    the scores: misses are answered, /ready and /metrics say it, and the exit status says it."""
    import resource

    cache = fresh_cache(trained, tmp_path)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    with ServerProcess("--head", trained / "h.pt", "--cache-dir", cache, "--token-file", trained / "token",
                       preexec_fn=small_files) as s, client(s) as c:
        r = c.post("/score", json={"texts": [f"a miss that cannot be stored {i}" for i in range(40)]})
        assert r.status_code == 200 and r.json()["misses"] == 40
        deadline = time.monotonic() + 30
        while c.get("/ready").json()["write_back_error"] is None and time.monotonic() < deadline:
            time.sleep(0.5)  # the idle flush (after 5 s) tries to write the shard
        assert "could not write a shard" in c.get("/ready").json()["write_back_error"]
        assert "orm_cache_write_back_failing 1.0" in c.get("/metrics").text
        assert c.post("/score", json={"texts": ["a miss that cannot be stored 0"]}).json()["scores"] == \
            r.json()["scores"][:1]  # remembered, not lost
        code = s.stop()
    assert code == 1 and any("write-back failed" in line for line in s.lines), s.lines[-5:]
