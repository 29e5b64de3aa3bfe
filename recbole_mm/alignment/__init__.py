"""SICSRec's content modality semantic alignment (spec §2): run before training.

1. :mod:`~recbole_mm.alignment.judge`: a judge picks, per user, the earlier item most similar to
   the target item (LLM through a pluggable backend, or the offline lexical judge);
2. :mod:`~recbole_mm.alignment.pairs`: one (target, similar) pair per user, leakage-free by
   default (``sft_target: last_train``);
3. :mod:`~recbole_mm.alignment.sft`: ``L_SFT`` fine-tuning of text / image encoders
   (``transformers``) or of residual heads over frozen features, and feature extraction;
4. :mod:`~recbole_mm.alignment.export`: feature files the dataset yaml then points at.

CLI: ``python -m recbole_mm.alignment --dataset=... --out_dir=... [--key=value]``.
"""
from recbole_mm.alignment.judge import (EmbeddingJudge, LexicalJudge, LLMJudge, OpenAIChatBackend,  # noqa: F401
                                        PairFileJudge, build_prompt, make_judge, parse_reply)
from recbole_mm.alignment.pairs import Pair, build_pairs, check_leakage_free, pairs_from_dataset  # noqa: F401
from recbole_mm.alignment.sft import run_feature_head_sft, sft_loss  # noqa: F401
