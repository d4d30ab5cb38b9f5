"""Models built offline for tests, benchmarks and GPU throughput runs: no hub, no network.

``tiny_opt`` saves a real ``OPTModel`` (the same code path as facebook/opt-1.3b) with seeded
random weights and a byte-level BPE tokenizer trained on the spot, as a Hugging Face directory
that ``--model DIR`` loads through ``from_pretrained`` like any downloaded model.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Step 1: Tom has 3 apples and buys 4 more, so he has 3 + 4 = 7 apples.",
    "Step 2: He gives away 2, leaving 7 - 2 = 5. The answer is 5.",
    "Each box holds 12 pencils; 6 boxes hold 6 * 12 = 72 pencils. Final answer: 72",
    "A train travels 60 miles per hour for 2.5 hours: 60 * 2.5 = 150 miles.",
    "Question: how many eggs are left? Answer: 16 - 3 - 4 = 9 eggs, sold at $2 each = $18.",
    "the quick brown fox jumps over the lazy dog 0123456789 + - * / = ( ) . , : ; ? ! $ %",
]

# facebook/opt-1.3b's architecture (the defaults of OPTConfig are the 350m's).
OPT_1_3B = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192,
                word_embed_proj_dim=2048, max_position_embeddings=2048, vocab_size=50272)


def build_tokenizer(vocab_size: int = 400, padding_side: str = "right"):
    """A byte-level BPE with OPT's special tokens (<s>=0, <pad>=1, </s>=2, <unk>=3) that
    prepends ``</s>`` like OPT's tokenizer. Any text encodes (byte level: nothing is unknown).
    ``padding_side`` is a constructor argument so that ``save_pretrained`` records it (an
    attribute set afterwards is not saved)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                       special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side=padding_side)


def tiny_opt(directory: str | Path, seed: int = 0, hidden_size: int = 64, num_hidden_layers: int = 2,
             padding_side: str = "right", dtype: str = "float32", **config) -> Path:
    """Save a seeded random-weight OPT and its tokenizer to ``directory``; return the path.

    ``tiny_opt(d, **OPT_1_3B, dtype="float16")`` saves facebook/opt-1.3b's architecture (random
    weights, 2.6 GB): the arithmetic of the real model, for throughput runs without the hub."""
    import torch
    from transformers import OPTConfig, OPTModel

    directory = Path(directory)
    tok = build_tokenizer(padding_side=padding_side)
    params = dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                  num_attention_heads=max(1, hidden_size // 16), ffn_dim=hidden_size * 4,
                  word_embed_proj_dim=hidden_size, max_position_embeddings=1024,
                  vocab_size=len(tok), pad_token_id=1, bos_token_id=2, eos_token_id=2)
    params.update(config)
    torch.manual_seed(seed)
    model = OPTModel(OPTConfig(**params)).eval().to(getattr(torch, dtype))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


class ServerProcess:
    """``orm-cache serve ARGS --port 0`` in a child process, for tests and benchmarks: waits for
    its "listening on" line and keeps every line it writes (``lines``). A context manager that
    sends SIGTERM on exit; :meth:`stop` returns the exit status."""

    def __init__(self, *args, env: dict | None = None, timeout: float = 120.0, preexec_fn=None):
        import os
        import subprocess
        import sys
        import threading
        import time

        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "orm_cache", "serve", "--port", "0", *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
        self._listening = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("orm-cache serve did not start:\n" + "\n".join(self.lines[-20:]))
        self.url = next(x for x in self.lines if "listening on" in x).split("listening on ")[1].split()[0]

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self._listening.set()

    def stop(self, sig=None, timeout: float = 60.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        return self.proc.wait(timeout)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.stop()
