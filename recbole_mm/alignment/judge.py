"""Semantic judges for SICSRec's LLM-driven sample construction (spec §2.1, §2.3.1).

A judge is any callable ``judge(target, candidates, user=None) -> item id | None`` where
``target = (id, title)`` and ``candidates = [(id, title), ...]`` in sequence order. It returns the
id of the candidate whose title is most similar to the target's, or ``None`` ("nothing similar").

* :class:`LexicalJudge` (default, deterministic, no weights): cosine of character 1-2-gram TF-IDF
  vectors (works for Chinese titles); ties go to the most recent candidate. An approximation of
  the paper's LLM, which reads raw text.
* :class:`EmbeddingJudge`: cosine of the vectors of any frozen text encoder (a callable).
* :class:`PairFileJudge`: replays an existing ``target,similar`` file (official
  ``item_pairs_id.txt`` format) to reuse LLM decisions made elsewhere.
* :class:`LLMJudge`: the paper's three-part prompt, a pluggable chat backend (greedy), a strict
  reply parser, id validation, and a JSONL answer cache so reruns are deterministic and free.
  Backends: :class:`OpenAIChatBackend` (any OpenAI-compatible HTTP endpoint, standard library
  only) and :class:`TransformersChatBackend` (a local chat model through ``transformers``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

Item = Tuple[int, str]
logger = logging.getLogger(__name__)


def _validate(choice, target: Item, candidates: Sequence[Item]):
    """``choice`` if it is one of the candidates and not the target, else ``None``."""
    if choice is None:
        return None
    ids = {int(c[0]) for c in candidates}
    choice = int(choice)
    if choice == int(target[0]) or choice not in ids:
        return None
    return choice


def dedup_candidates(candidates: Sequence[Item], target_id: int) -> list:
    """Candidates in sequence order, first occurrence kept, the target removed."""
    seen, out = set(), []
    for cid, title in candidates:
        cid = int(cid)
        if cid == int(target_id) or cid in seen:
            continue
        seen.add(cid)
        out.append((cid, title))
    return out


class LexicalJudge:
    """Character n-gram TF-IDF cosine (``ngram_range`` default (1, 2)); IDF fitted on ``corpus``
    (all titles) when given, else on each call's titles. ``min_sim``: below it -> ``None``."""

    name = "lexical"

    def __init__(self, corpus: Optional[Sequence[str]] = None, ngram_range=(1, 2), min_sim: float = 0.0):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.min_sim = float(min_sim)
        self.ngram_range = tuple(ngram_range)
        self._make = lambda: TfidfVectorizer(analyzer="char", ngram_range=self.ngram_range,
                                             lowercase=True, norm="l2")
        self.vectorizer = None
        if corpus:
            self.vectorizer = self._make().fit([t or "" for t in corpus])
        logger.info("SICSRec alignment: LexicalJudge (character n-gram TF-IDF) approximates the "
                    "paper's LLM judge")

    def similarities(self, target: str, titles: Sequence[str]) -> np.ndarray:
        vec = self.vectorizer
        texts = [target or ""] + [t or "" for t in titles]
        if vec is None:
            try:
                vec = self._make().fit(texts)
            except ValueError:  # empty vocabulary (all titles empty)
                return np.zeros(len(titles))
        m = vec.transform(texts)
        return np.asarray((m[1:] @ m[0].T).todense()).ravel()

    def __call__(self, target: Item, candidates: Sequence[Item], user=None):
        cands = dedup_candidates(candidates, target[0])
        if not cands:
            return None
        sims = self.similarities(target[1], [t for _, t in cands])
        best = float(sims.max())
        if best <= 0.0 or best < self.min_sim:
            return None
        idx = int(np.flatnonzero(sims == best)[-1])  # ties -> most recent candidate
        return cands[idx][0]


class EmbeddingJudge:
    """Cosine of ``encode(list_of_titles) -> [n, dim]`` vectors (any frozen text encoder)."""

    name = "embedding"

    def __init__(self, encode: Callable[[list], np.ndarray], min_sim: float = -1.0):
        self.encode, self.min_sim = encode, float(min_sim)

    def __call__(self, target: Item, candidates: Sequence[Item], user=None):
        cands = dedup_candidates(candidates, target[0])
        if not cands:
            return None
        x = np.asarray(self.encode([target[1]] + [t for _, t in cands]), dtype=np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = x[1:] @ x[0]
        best = float(sims.max())
        if best < self.min_sim:
            return None
        return cands[int(np.flatnonzero(sims == best)[-1])][0]


class PairFileJudge:
    """Replays ``target,similar`` lines (extra columns ignored; ``#`` comments skipped)."""

    name = "pair_file"

    def __init__(self, path: str, id_offset: int = 0):
        self.pairs = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = [p.strip() for p in line.strip().split(",")]
                if len(parts) < 2 or line.startswith("#") or not parts[0].lstrip("-").isdigit():
                    continue
                self.pairs[int(parts[0]) + id_offset] = int(parts[1]) + id_offset

    def __call__(self, target: Item, candidates: Sequence[Item], user=None):
        return _validate(self.pairs.get(int(target[0])), target, candidates)


# ---------------------------------------------------------------------- LLM judge
PROMPTS = {
    "en": (
        "You are an expert assessor of video similarity. Given a target video title and a list "
        "of candidate video titles, pick the ONE candidate whose title is most similar in "
        "meaning to the target title.",
        "Target: {target}\nCandidates: {candidates}",
        "Reply with exactly one pair in the form <target_id>-<similar_id> (for example "
        "{example}) and nothing else. If no candidate is similar, reply (-1,-1).",
    ),
    "zh": (
        "你是一名视频相似度评估专家。给定一个目标视频标题和一组候选视频标题，请从候选中选出与目标标题"
        "语义最相似的一个。",
        "目标：{target}\n候选：{candidates}",
        "只回复一个形如 <目标id>-<相似id> 的结果（例如 {example}），不要输出其他内容。"
        "如果没有相似的候选，回复 (-1,-1)。",
    ),
}
_REPLY = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_NONE = re.compile(r"^\s*\(\s*-1\s*,\s*-1\s*\)\s*$")


def build_prompt(target: Item, candidates: Sequence[Item], language: str = "zh") -> str:
    """The paper's three-part prompt: instruction, input (``id-title`` items), output guidance."""
    if language not in PROMPTS:
        raise ValueError(f"prompt language must be one of {list(PROMPTS)}, got '{language}'.")
    instruction, inp, guide = PROMPTS[language]
    cand = ", ".join(f"{int(i)}-{t}" for i, t in candidates)
    example = f"{int(target[0])}-{int(candidates[0][0])}" if candidates else "12-34"
    return "\n\n".join([instruction, inp.format(target=f"{int(target[0])}-{target[1]}", candidates=cand),
                        guide.format(example=example)])


def parse_reply(reply: str, target_id: int):
    """Strict parse: ``<target_id>-<similar_id>`` -> similar id; the sentinel ``(-1,-1)`` or any
    other text (wrong target id, extra words, several pairs) -> ``None``."""
    if reply is None or _NONE.match(reply):
        return None
    m = _REPLY.match(reply)
    if not m or int(m.group(1)) != int(target_id):
        return None
    return int(m.group(2))


class LLMJudge:
    """Ask a chat model (``backend(prompt) -> reply``, greedy) and parse/validate its answer.

    ``cache_path``: JSONL of answers keyed by (dataset, user, target, candidate hash, backend).
    """

    name = "llm"

    def __init__(self, backend: Callable[[str], str], language: str = "zh", cache_path: Optional[str] = None,
                 dataset: str = "", backend_name: Optional[str] = None):
        self.backend, self.language, self.dataset = backend, language, dataset
        self.backend_name = backend_name or getattr(backend, "name", type(backend).__name__)
        self.cache_path = cache_path
        self.cache = {}
        if cache_path and os.path.isfile(cache_path):
            with open(cache_path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        rec = json.loads(line)
                        self.cache[rec["key"]] = rec["reply"]

    def key(self, target: Item, candidates: Sequence[Item], user) -> str:
        cand = hashlib.sha256(json.dumps([[int(i), t] for i, t in candidates], ensure_ascii=False)
                              .encode()).hexdigest()[:16]
        return f"{self.dataset}|{user}|{int(target[0])}|{cand}|{self.backend_name}|{self.language}"

    def __call__(self, target: Item, candidates: Sequence[Item], user=None):
        cands = dedup_candidates(candidates, target[0])
        if not cands:
            return None
        key = self.key(target, cands, user)
        if key in self.cache:
            reply = self.cache[key]
        else:
            reply = self.backend(build_prompt(target, cands, self.language))
            self.cache[key] = reply
            if self.cache_path:
                with open(self.cache_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
        return _validate(parse_reply(reply, target[0]), target, cands)


class OpenAIChatBackend:
    """``POST {base_url}/chat/completions`` of an OpenAI-compatible server, temperature 0.

    The API key is read from the environment variable ``api_key_env`` (never stored)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_tokens: int = 16):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout, self.max_tokens = model, api_key_env, timeout, max_tokens
        self.name = f"openai:{model}"

    def request_body(self, prompt: str) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0, "max_tokens": self.max_tokens}

    def __call__(self, prompt: str) -> str:
        import urllib.request

        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(self.request_body(prompt)).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            data = json.loads(resp.read().decode())
        return data["choices"][0]["message"]["content"].strip()


class TransformersChatBackend:
    """A local chat model (e.g. GLM-4-9B-Chat) through ``transformers``: chat template, greedy."""

    def __init__(self, model_name_or_path: str, max_new_tokens: int = 16, device: Optional[str] = None,
                 model=None, tokenizer=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=True)
        self.model = model or AutoModelForCausalLM.from_pretrained(model_name_or_path, trust_remote_code=True)
        if device:
            self.model.to(device)
        self.model.eval()
        self.max_new_tokens = max_new_tokens
        self.name = f"hf:{model_name_or_path}"

    def __call__(self, prompt: str) -> str:
        import torch

        msgs = [{"role": "user", "content": prompt}]
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
        else:
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def make_judge(kind: str, titles: Optional[dict] = None, **kw):
    """``lexical`` | ``pair_file`` (``path``) | ``llm_http`` (``base_url``, ``model``) |
    ``llm_local`` (``model``) -> a judge."""
    if kind == "lexical":
        return LexicalJudge(corpus=list(titles.values()) if titles else None, min_sim=kw.get("min_sim", 0.0))
    if kind == "pair_file":
        return PairFileJudge(kw["path"], kw.get("id_offset", 0))
    if kind == "llm_http":
        return LLMJudge(OpenAIChatBackend(kw["base_url"], kw["model"]), kw.get("language", "zh"),
                        kw.get("cache_path"), kw.get("dataset", ""))
    if kind == "llm_local":
        return LLMJudge(TransformersChatBackend(kw["model"]), kw.get("language", "zh"),
                        kw.get("cache_path"), kw.get("dataset", ""))
    raise ValueError(f"judge must be lexical, pair_file, llm_http or llm_local, got '{kind}'.")
