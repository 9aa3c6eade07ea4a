"""Language-model backdoors (METHODS §3.2, §4.4–4.6, §10; the paper's Tab. VIII–XI).

One module per step of the method:

* :mod:`~pcp_lens.language.hf` — Hugging Face GPT-2 folders ↔ ``HookedTransformer``, offline.
* :mod:`~pcp_lens.language.corpus` — poisoned paragraphs, clean/trigger prompts, validation text.
* :mod:`~pcp_lens.language.toxicity` — ``texts -> P(toxic)`` classifiers.
* :mod:`~pcp_lens.language.generate` — batched, seeded sampling with a KV cache and hooks.
* :mod:`~pcp_lens.language.asr` — ASR/ATR, the log-probability gap, validation loss.
* :mod:`~pcp_lens.language.sweeps` — ASR-scored ablation sweeps, PCP tuning on any objective.
* :mod:`~pcp_lens.language.surgery` — embedding surgery.
* :mod:`~pcp_lens.language.finetune` — fine-tuning on text with frozen modules.
"""

from pcp_lens.language.asr import ASRResult, attack_success, logprob_gap, text_loss, toxic_rate
from pcp_lens.language.corpus import paragraphs, poison, prompt_sets, split_sentences, text_chunks
from pcp_lens.language.finetune import PAPER_FINETUNE, finetune_text, text_batch
from pcp_lens.language.generate import PAPER_SAMPLING, SamplingConfig, generate, sample_texts
from pcp_lens.language.hf import hf_from_hooked, hooked_from_hf, load_hf_gpt2, save_hf_gpt2
from pcp_lens.language.surgery import EmbeddingEdit, embedding_surgery, plan_surgery
from pcp_lens.language.sweeps import (
    PCPTuneResult,
    ablation_asr_sweep,
    asr_score,
    gap_score,
    loss_score,
    sweep_pcp,
    tune_pcp,
)
from pcp_lens.language.toxicity import (
    HFPipelineClassifier,
    ProfanityCheckClassifier,
    ToxicityClassifier,
    WordListClassifier,
    default_classifier,
)

__all__ = [
    "PAPER_FINETUNE",
    "PAPER_SAMPLING",
    "ASRResult",
    "EmbeddingEdit",
    "HFPipelineClassifier",
    "PCPTuneResult",
    "ProfanityCheckClassifier",
    "SamplingConfig",
    "ToxicityClassifier",
    "WordListClassifier",
    "ablation_asr_sweep",
    "asr_score",
    "attack_success",
    "default_classifier",
    "embedding_surgery",
    "finetune_text",
    "gap_score",
    "generate",
    "hf_from_hooked",
    "hooked_from_hf",
    "load_hf_gpt2",
    "logprob_gap",
    "loss_score",
    "paragraphs",
    "plan_surgery",
    "poison",
    "prompt_sets",
    "sample_texts",
    "save_hf_gpt2",
    "split_sentences",
    "sweep_pcp",
    "text_batch",
    "text_chunks",
    "text_loss",
    "toxic_rate",
    "tune_pcp",
]
