"""The live scorer: text -> tokenizer -> frozen encoder -> pooling -> head, end to end.

It rebuilds the encoder a checkpoint was trained on from the spec the store recorded, and
refuses to score if the rebuilt encoder's fingerprint differs from the head's (the model
directory changed, another dtype, …). It is the project's answer to the reference card's
``score_trace`` / ``rank_candidates``::

    scorer = LiveScorer("cache/heads/….pt")
    scorer.score(["Step 1: …", "Step 1: …"])          # np.ndarray of scores
    scorer.score(responses, prompts=[question] * n)   # joined with the head's recorded template
    scorer.rank(candidates, prompt=question)           # [(index, score)], best first
    scorer.prefer(a, b, prompt=question)               # P(a beats b) = σ((s_a - s_b) / T)
    scorer.score([conversation])                       # a list of {"role", "content"} messages
    scorer.score([[assistant_turn]], prompts=[messages])  # TRL's explicit-prompt shape
    scorer.score_prefixes(["Step 1: …\nStep 2: …"], prompts=[question])  # a partial trace (a tree node)
    scorer.score_steps([solution], prompts=[question])  # one score per step prefix (lines)

Texts are built with the recipe the head recorded (template, prompt column and chat template of
its training data), so a live score is the score of the same text the head was trained and
evaluated on.
"""

from __future__ import annotations

import math

import numpy as np

from ..encode.spec import EncoderSpec
from ..text import DEFAULT_STEP_PATTERN, TextBuilder, TextRecipe
from ..encode.embedder import encode_texts
from ..errors import DataError
from ..head import CheckpointError, Head
from ..store import StoreError, short


def encoder_for_head(head: Head, device: str = "auto", model: str | None = None):
    """The encoder ``head`` was trained on, rebuilt from its recorded spec (``model`` replaces the
    recorded model path); refused when its fingerprint is not the head's. Loads the config and
    tokenizer only (the weights on first use)."""
    from .joined import primary_feature

    if not head.meta.get("encoder_spec"):
        raise CheckpointError("this head carries no encoder spec (a reference-format import); "
                              "score its traces through a store, or train a head with fit-head")
    return rebuild_encoder(head.meta["encoder_spec"], head.fingerprint, primary_feature(head.feature), device, model)


def rebuild_encoder(spec: dict, fingerprint: str | None, feature: str, device: str = "auto", model: str | None = None):
    """An encoder from a recorded spec, pooling ``feature``'s columns too (the recorded spec is its
    store's first writer's, which may not pool them); refused when its fingerprint is not
    ``fingerprint`` (the model directory changed, another dtype, …)."""
    from ..encode.model import Encoder

    spec = dict(spec)
    if model:
        spec["model"] = model
    encoder = Encoder(EncoderSpec(**spec).with_feature(feature), device)
    if fingerprint and encoder.fingerprint != fingerprint:
        raise StoreError(f"the rebuilt encoder {spec.get('model')} has fingerprint {short(encoder.fingerprint)} but "
                         f"the head was trained on {short(fingerprint)} (model files, dtype or tokenizer changed); "
                         "scores would not match")
    return encoder


def other_encoders(head: Head, device: str = "auto") -> dict:
    """model -> encoder, for each other encoder a head over several reads (:mod:`.joined`)."""
    from .joined import other_columns

    cols = other_columns(head.feature)
    return {r["model"]: rebuild_encoder(r["encoder_spec"], r["fingerprint"], "+".join(cols[r["model"]]), device)
            for r in head.meta.get("encoders") or ()}


class LiveScorer:
    def __init__(self, head: Head | str, device: str = "auto", batch_tokens: int | None = None,
                 max_batch_size: int = 256, model: str | None = None, override_recipe: bool = False,
                 **recipe_options):
        """``recipe_options`` (template, prompt_col, chat_template, preset) override the head's
        recorded recipe only with ``override_recipe`` (else a difference is refused), as on the CLI."""
        self.head = head if isinstance(head, Head) else Head.load(head)
        self.encoder = encoder_for_head(self.head, device, model)
        self.others = other_encoders(self.head, device)  # a head over several encoders: the others
        self.batch_tokens, self.max_batch_size = batch_tokens, max_batch_size
        from .bind import prompt_required

        self.recipe = TextRecipe.for_head(self.head.recipe, override=override_recipe, **recipe_options)
        self.builder = TextBuilder(self.recipe, self.encoder.spec.model, self.encoder.spec.revision,
                                   require_prompt=prompt_required(self.head, self.recipe, override_recipe))

    def texts(self, responses, prompts=None) -> list[str]:
        """The texts the encoder sees: each response (a string, or a conversation: a list of
        role/content messages ending with the assistant turn) joined with its prompt (a string
        or a message list) by the head's recipe. A bare string is refused (it would be scored
        character by character), and so is a bare conversation (its messages would be scored
        one by one)."""
        return [text for text, _ in self.built(responses, prompts, pooled=False)]

    def built(self, responses, prompts=None, pooled: bool = True) -> list[tuple[str, int | None]]:
        """:meth:`texts`, each with the character offset where its response starts (what
        response_mean pools from; None when a chat template made it unrecognisable)."""
        return build_texts(self.builder, self.head, responses, prompts, pooled)

    def vectors(self, texts: list[str], one_at_a_time: bool = False, starts: list[int | None] | None = None,
                special_tokens: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(N, D)`` pooled vectors of the head's feature column, and token counts, of texts as
        :meth:`texts` builds them. ``starts``: where each response starts in its text
        (response_mean; None: the texts are responses alone); ``special_tokens``: whether the
        tokenizer adds its special tokens (default: as the head's recipe tokenizes)."""
        max_batch = 1 if one_at_a_time else self.max_batch_size
        if special_tokens is None:
            special_tokens = self.builder.special_tokens if self.builder.recipe.kind != "auto" else True
        if starts is not None:
            from .vectors import check_known_starts

            check_known_starts(starts, self.head.feature, "a string the chat recipe takes as already rendered")
        from .joined import other_columns, primary_feature

        X, n = encode_texts(self.encoder, list(texts), primary_feature(self.head.feature), self.batch_tokens,
                            max_batch, starts, special_tokens)
        for m, cols in other_columns(self.head.feature).items():  # each other encoder reads the same texts
            Xm, _ = encode_texts(self.others[m], list(texts), "+".join(cols), self.batch_tokens, max_batch, starts,
                                 special_tokens)
            X = np.hstack([X, Xm])
        return X, n

    def score(self, texts: list[str], prompts: list[str | None] | None = None,
              one_at_a_time: bool = False) -> np.ndarray:
        """Scores of ``texts`` (responses), each joined with its prompt (when given) by the head's recipe."""
        return self._scores(self.built(texts, prompts), one_at_a_time)

    def _scores(self, built: list[tuple[str, int | None]], one_at_a_time: bool = False) -> np.ndarray:
        """``(N,)`` scores of built ``(text, response start)`` pairs."""
        if not built:
            return np.empty(0, dtype=np.float32)
        texts, starts = zip(*built)
        return self.head.score(self.vectors(list(texts), one_at_a_time, list(starts))[0])

    def rank(self, candidates: list[str], prompt: str | None = None, aggregate: str = "best", answers=None,
             answer_pattern: str | None = None) -> list[tuple[int, float]]:
        """Candidates' indices and scores, best first (ties keep input order); one shared prompt.
        With ``answers`` (one final answer per candidate, None where it has none) or
        ``answer_pattern`` (a regex whose last match in each response is its answer),
        ``aggregate`` orders by answer first: ``vote`` (most candidates), ``weighted-vote`` (largest
        sum of exp(score / T), T the checkpoint's calibration or 1), then by score; :meth:`pick`
        says which answer won and by how much."""
        r = self.pick(candidates, prompt, aggregate, answers, answer_pattern)
        return [(i, r["scores"][i]) for i in r["order"]]

    def pick(self, candidates: list[str], prompt: str | None = None, aggregate: str = "weighted-vote", answers=None,
             answer_pattern: str | None = None) -> dict:
        """Best-of-N with answers: ``{"answer", "weight", "share", "tied", "best", "order",
        "scores", "answers", "aggregate", "temperature"}`` (:func:`~orm_cache.evaluate.vote.ranking`;
        without answers, only ``aggregate="best"`` and no answer fields)."""
        from ..evaluate.vote import candidate_answers, check_aggregate, ranking

        check_aggregate(aggregate, answers is not None or answer_pattern is not None)
        built = self.built(candidates, None if prompt is None else [prompt] * len(candidates))
        found = candidate_answers(built, answers, answer_pattern)
        texts, starts = zip(*built) if built else ((), ())
        s = self.head.score(self.vectors(list(texts), starts=list(starts))[0]) if built else np.empty(0)
        return ranking(s, found, aggregate, self.head.temperature)

    def score_prefixes(self, partials: list, prompts: list | None = None, one_at_a_time: bool = False) -> np.ndarray:
        """Scores of partial traces (a search tree's nodes): each response is unfinished, so its
        text is the recipe's cut right after it, with no closing chat tokens or EOS
        (:mod:`orm_cache.text.steps`): the very text, key and vector of the step prefix that
        ``embed --steps`` stores for any trace passing through this node."""
        return self._scores(build_texts(self.builder, self.head, partials, prompts, prefix=True), one_at_a_time)

    def score_steps(self, responses: list, prompts: list | None = None,
                    step_pattern: str | None = None) -> list[np.ndarray]:
        """Per response, the score of each of its step prefixes (steps cut by ``step_pattern``, else
        the head's recorded delimiter, else a line break), in step order: what ``orm-cache score
        --steps`` writes."""
        from .bind import head_step_pattern

        step_pattern = head_step_pattern(self.head, step_pattern) or DEFAULT_STEP_PATTERN
        responses = list(responses)
        prompts = None if prompts is None else list(prompts)
        built = build_texts(self.builder, self.head, responses, prompts, pooled=False)  # the checks, and one error per row
        prompts = [None] * len(built) if prompts is None else list(prompts)
        steps = [self.builder.build_steps(r, p, f"text {i}", "text", step_pattern)
                 for i, (r, p) in enumerate(zip(responses, prompts))]
        scores = self._scores([t for s in steps for t in s])
        bounds = np.cumsum([0] + [len(s) for s in steps])
        return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def prefer(self, a: str, b: str, prompt: str | None = None) -> float:
        """P(a beats b) = σ((s_a - s_b) / T), with the checkpoint's calibration T (else T = 1)."""
        sa, sb = self.score([a, b], None if prompt is None else [prompt, prompt])
        T = self.head.temperature or 1.0
        return 0.5 * (1.0 + math.tanh(0.5 * (float(sa) - float(sb)) / T))  # σ without overflow: 0 or 1 at the ends


def build_texts(builder: TextBuilder, head: Head, responses, prompts=None,
                pooled: bool = True, prefix: bool = False) -> list[tuple[str, int | None]]:
    """The texts of ``responses`` (strings or conversations) with their ``prompts`` (strings,
    message lists or None; None: no prompts) by ``builder`` (the head's recipe), each with the
    character offset where its response starts (None: unknown). The Python and HTTP doors'
    argument checks: a bare string or a bare conversation where a list of them is due is a
    TypeError; a row the recipe cannot take is a DataError naming its index. ``pooled``: the
    texts will be pooled by the head's feature (then a bare string is refused where that feature
    cannot know where its response starts). ``prefix``: the responses are unfinished (partial
    traces, :meth:`~orm_cache.text.TextBuilder.build_prefix`)."""
    for name, seq in (("texts", responses), ("prompts", prompts)):
        if isinstance(seq, (str, bytes)):
            raise TypeError(f"{name} must be a list of strings, not a single string; wrap it: [{name[:-1]}]")
        if isinstance(seq, (list, tuple)) and seq and all(isinstance(m, dict) for m in seq):
            raise TypeError(f"{name} is one conversation (a list of messages), not a list of them; "
                            f"wrap it: [conversation]")
    responses = list(responses)
    if prompts is None:
        if builder.require_prompt and any(isinstance(r, str) for r in responses):
            raise DataError("this head was trained on prompts joined to each response by its template "
                            f"({builder.recipe.template!r}); pass prompts=[…] (one per text, None where a text "
                            "has no prompt) so the texts are the ones it was trained on")
        prompts = [None] * len(responses)
    prompts = list(prompts)
    if len(prompts) != len(responses):
        raise DataError(f"{len(prompts)} prompts for {len(responses)} texts; give one prompt per text")
    if pooled and "response_mean@" in head.feature and (head.recipe or {}).get("prompt_col"):
        # a string with no prompt is taken whole, but this head's texts joined prompts: the same string
        # could be a prompt + response, whose response starts elsewhere (another vector under one key)
        bare = [i for i, (r, p) in enumerate(zip(responses, prompts)) if isinstance(r, str) and not p]  # None or ""
        if bare:
            raise DataError(f"text {bare[0]}: no prompt, but this head pools the response only "
                            f"({head.feature}) and was trained on prompts joined to responses; give its "
                            "prompt (a text without one cannot say where its response starts)")
    out = []
    for i, (r, p) in enumerate(zip(responses, prompts)):
        if not isinstance(r, (str, list, tuple)) or (isinstance(r, str) and not r.strip()):
            raise DataError(f"text {i} must be a non-empty string or a list of messages, got {r!r:.60}")
        if p is not None and not isinstance(p, (str, list, tuple)):
            raise DataError(f"prompt {i} must be a string, a list of messages or None, got {type(p).__name__}")
        out.append((builder.build_prefix if prefix else builder.build)(r, p, f"text {i}", "text"))  # a ValueError
    return out
