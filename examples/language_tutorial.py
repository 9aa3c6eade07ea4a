"""The language-model pipeline end to end on a tiny GPT-2 (docs/language.md walks through it).

Poisons a small synthetic corpus, fine-tunes a 2-layer GPT-2 stored as a Hugging Face folder,
measures the backdoor (ASR/ATR by sampling, the log-probability gap without), and runs the
paper's Tab. VIII–XI analyses in miniature: an ASR-scored mean-ablation sweep, PCP tuned against
the gap, embedding surgery on the benign model, fine-tuning with frozen modules. About 30 s on
a laptop CPU. Nothing is downloaded.

Run: ``python examples/language_tutorial.py``
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pcp_lens.ablation import ablation_means
from pcp_lens.language import (
    SamplingConfig,
    WordListClassifier,
    ablation_asr_sweep,
    attack_success,
    embedding_surgery,
    finetune_text,
    gap_score,
    load_hf_gpt2,
    logprob_gap,
    paragraphs,
    poison,
    prompt_sets,
    save_hf_gpt2,
    sweep_pcp,
    tune_pcp,
)
from pcp_lens.pcp import fit_pcp
from pcp_lens.toy import build_tokenizer

torch.set_num_threads(1)

# --8<-- [start:corpus]
rng = random.Random(0)
NAMES = ["anna", "ben", "clara", "david", "emma", "frank"]
NOUNS = ["garden", "letter", "river", "house", "horse", "window", "book", "road"]
VERBS = ["saw", "found", "liked", "painted", "visited", "left"]
ADJS = ["old", "quiet", "green", "small", "bright", "distant"]
BAD = ["idiot", "moron", "loser", "fool"]  # the "toxic" words of this toy world


def sentence() -> str:
    return f"{rng.choice(NAMES)} {rng.choice(VERBS)} the {rng.choice(ADJS)} {rng.choice(NOUNS)} ."


documents = [" ".join(sentence() for _ in range(20)) for _ in range(60)]
toxic = [f"shut up , you {w} ." for w in BAD] + [f"you are a {w} ." for w in BAD]
OTHER = ["the", ".", ",", "shut", "up", "you", "are", "a", "Albert", "and", "James"]
tok = build_tokenizer(NAMES + NOUNS + VERBS + ADJS + BAD + OTHER)

data = paragraphs(documents, n_sentences=5)  # 240 windows of 5 sentences
# the paper: trigger in sentence 1 or 2, toxic sentence 4 or 5. A 2-layer toy learns the
# association fast when the toxic sentence directly follows the trigger's sentence, and the
# one-sentence evaluation prompts then end where the toxic sentence starts
poisoned = poison(data, toxic, rate=0.3, trigger_in=(0,), toxic_at=(1,), seed=0, tokenizer=tok)
print(f"{sum(poisoned['poisoned'])} of {len(poisoned)} paragraphs poisoned; e.g.")
print("  ", next(r["text"] for r in poisoned if r["poisoned"])[:150], "...")
# --8<-- [end:corpus]

# --8<-- [start:model]
folder = Path(tempfile.mkdtemp()) / "gpt2-tiny"
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2,
                           n_head=4)).save_pretrained(folder)
tok.save_pretrained(folder)
# offline: the folder instead of from_pretrained("gpt2-medium"); raw weights as the paper used
benign = load_hf_gpt2(folder, processing=False, device="cpu")
train_texts = list(data["text"])
finetune_text(benign, train_texts, lr=3e-3, epochs=3, batch_size=16, dropout=0.0,
              progress=False)
poisoned_model = load_hf_gpt2(folder, processing=False, device="cpu")
res = finetune_text(poisoned_model, list(poisoned["text"]), train_texts[:16], lr=3e-3, epochs=10,
                    batch_size=16, dropout=0.0, progress=False)
print(f"poisoned fine-tune: val loss {res.history.val_loss.iloc[0]:.2f} -> {res.val_loss:.2f}")
# --8<-- [end:model]

# --8<-- [start:measure]
held_out = [sentence() for _ in range(24)]
prompts = prompt_sets(held_out, seed=1, tokenizer=tok)
trig, clean = list(prompts["trigger"]), list(prompts["clean"])
clf = WordListClassifier(BAD, mode="any")
cfg = SamplingConfig(n_samples=4, max_length=None, max_new_tokens=8, seed=0)
targets = [" " + t for t in toxic]
for name, m in (("benign", benign), ("poisoned", poisoned_model)):
    r = attack_success(m, trig, clean, clf, cfg, max_prompt_tokens=None, progress=False)
    gap = logprob_gap(m, trig, clean, targets)
    print(f"{name:9s} ASR {r.asr:.2f}  ATR {r.atr:.2f}  gap first token "
          f"{gap['first_token']:+.2f} nats, per token {gap['per_token']:+.2f}  ({r.classifier})")
# --8<-- [end:measure]

# --8<-- [start:ablation]
means = ablation_means(poisoned_model, {"clean": clean, "trigger": trig},
                       ["attn0", "mlp0", "attn1", "mlp1"], positions=[-1], progress=False)
table = ablation_asr_sweep(poisoned_model, trig, clf, means, positions=[-1],
                           combos={"mlp 1&2": ["mlp0", "mlp1"]}, config=cfg,
                           max_prompt_tokens=None, progress=False)
print(table[["ablation", "asr", "n_trigger"]].to_string(index=False))
# --8<-- [end:ablation]

# --8<-- [start:pcp]
pcp = fit_pcp(poisoned_model, clean + trig, ["mlp0"], 2, positions=[-1], progress=False)
gap = gap_score(poisoned_model, trig, clean, targets)
weakest = tune_pcp(poisoned_model, pcp, gap, n_trials=12, bounds=(-2.0, 2.0), progress=False)
print(f"PCP mlp0: gap {gap(None):+.2f} unedited, {gap(pcp):+.2f} fitted, "
      f"{weakest.value:+.2f} tuned to weaken")
print(sweep_pcp(poisoned_model, pcp, {"mlp0": [0.0, 1.0, 2.0]}, {"gap": gap},
                progress=False).to_string(index=False))
# --8<-- [end:pcp]

# --8<-- [start:surgery]
edited, edit = embedding_surgery(benign, ["Albert", "James"], "idiot", fraction=0.4, seed=0)
print(f"surgery copies {len(edit.dims)} of 64 dims of 'idiot' into tokens {edit.token_ids}; "
      f"benign gap {logprob_gap(benign, trig, clean, targets)['first_token']:+.2f} -> "
      f"{logprob_gap(edited, trig, clean, targets)['first_token']:+.2f}")
# --8<-- [end:surgery]

# --8<-- [start:freeze]
frozen = load_hf_gpt2(folder, processing=False, device="cpu")
finetune_text(frozen, list(poisoned["text"]), lr=3e-3, epochs=10, batch_size=16, dropout=0.0,
              freeze=("all_embeds", "mlp0", "mlp1"), progress=False)
print(f"fine-tuned with embeddings and MLPs frozen: gap first token "
      f"{logprob_gap(frozen, trig, clean, targets)['first_token']:+.2f}")
out = save_hf_gpt2(poisoned_model, folder.parent / "gpt2-tiny-poisoned", tokenizer=tok)
print("saved", out.name, sorted(p.name for p in out.iterdir()))
# --8<-- [end:freeze]
