"""Train the example query-intent classifier: a tiny BERT on generated e-commerce queries, in seconds on CPU.

Why a real training run and not random weights: the control plane judges versions by golden-set
quality and latency, so the examples must differ the way real models do. The recipes give a good
model (`base`, or `retrained` with another seed), an honestly slower one (`slow`: 4x the hidden
size and 3 layers instead of 2, trained the same way) and an honestly worse one (`damaged`: most labels of
the training data moved to another intent). The tokenizer is a WordPiece vocabulary taken from the
training queries, so the checkpoint is self-contained and its embedding table is small.

The result is an ordinary Hugging Face checkpoint directory (save_pretrained + tokenizer.json),
built by the same `build_intent` path as any user's checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from builders.errors import BadOption, BuildFailed
from builders.golden_data import INTENTS, TRAINING_SEED, intent_queries

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class IntentRecipe:
    """Everything that decides the trained model; written into the checkpoint as `shepherd_recipe.json`."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 0
    corrupt_share: float = 0.0  # share of training labels moved to another intent
    per_intent: int = 200  # training rows per intent
    vocab_size: int = 1000
    max_length: int = 32


RECIPES: dict[str, IntentRecipe] = {
    "base": IntentRecipe(),
    "retrained": IntentRecipe(seed=1),
    "slow": IntentRecipe(hidden=256, layers=3, heads=8, intermediate=1024, learning_rate=5e-4),
    "damaged": IntentRecipe(corrupt_share=0.5),
}


def wordpiece_vocabulary(texts: Sequence[str], vocab_size: int) -> list[str]:
    """Specials, every character (alone and as a `##` continuation), then the most frequent words.

    Why not tokenizers' WordPieceTrainer: it breaks frequency ties in hash order, so two trainings
    on the same text give different ids, and every retrained variant would need a new tokenizer in
    front of the ensemble. This vocabulary depends on the text only; words it lacks fall back to
    characters, which is how WordPiece treats rare words anyway.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({char for word in counts for char in word})
    vocabulary = [*SPECIAL_TOKENS, *characters, *(f"##{char}" for char in characters)]
    known = set(vocabulary)
    for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(vocabulary) >= vocab_size:
            break
        if word not in known:
            vocabulary.append(word)
            known.add(word)
    return vocabulary


def make_wordpiece_tokenizer(texts: Sequence[str], *, vocab_size: int = 1000, max_length: int = 32) -> Any:
    """A lower-casing BERT-style WordPiece fast tokenizer over `texts` ([CLS] text [SEP]), deterministic."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = wordpiece_vocabulary(texts, vocab_size)
    tokenizer = Tokenizer(models.WordPiece(vocab={token: i for i, token in enumerate(vocabulary)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocabulary.index("[CLS]"), vocabulary.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def _corrupt(labels: list[int], share: float, rng: random.Random) -> list[int]:
    """Move `share` of the labels to the next intent (a fixed derangement), so the damage is systematic.

    Uniformly random noise would leave the right intent the majority label for every query and a
    model would learn around it; a systematic shift is what a broken labelling job looks like.
    """
    count = len(INTENTS)
    return [(label + 1) % count if rng.random() < share else label for label in labels]


def train_intent_classifier(out_dir: Path, recipe: IntentRecipe = RECIPES["base"]) -> dict[str, Any]:
    """Train a BertForSequenceClassification by `recipe` and save it as a checkpoint in `out_dir`.

    Returns a summary (recipe, rows, seconds, final training loss) that is also written to
    `out_dir/shepherd_recipe.json`.
    """
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    # The rows (hence the learnt vocabulary) do not depend on the seed: every variant shares one
    # tokenizer, so the `<name>_tokenizer` model in front of the ensemble serves them all.
    rows = intent_queries(per_intent=recipe.per_intent, seed=TRAINING_SEED)
    texts = [text for text, _ in rows]
    labels = _corrupt([INTENTS.index(intent) for _, intent in rows], recipe.corrupt_share, rng)
    tokenizer = make_wordpiece_tokenizer(texts, vocab_size=recipe.vocab_size, max_length=recipe.max_length)
    config = BertConfig(  # type: ignore[call-arg]  # num_labels, id2label: PretrainedConfig kwargs
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        intermediate_size=recipe.intermediate,
        max_position_embeddings=max(64, recipe.max_length),
        num_labels=len(INTENTS),
        id2label=dict(enumerate(INTENTS)),
        label2id={name: i for i, name in enumerate(INTENTS)},
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertForSequenceClassification(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    order = list(range(len(rows)))
    loss_value = float("nan")
    for _ in range(recipe.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), recipe.batch_size):
            index = order[start : start + recipe.batch_size]
            batch = tokenizer(
                [texts[i] for i in index],
                padding=True,
                truncation=True,
                max_length=recipe.max_length,
                return_tensors="pt",
            )
            target = torch.tensor([labels[i] for i in index])
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=target).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
    model.eval()
    out_dir = Path(out_dir)
    summary = {
        "recipe": asdict(recipe),
        "rows": len(rows),
        "seconds": round(time.perf_counter() - started, 2),
        "final_loss": round(loss_value, 4),
        "intents": list(INTENTS),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "shepherd_recipe.json").write_text(json.dumps(summary, indent=2))
    except OSError as exc:
        raise BuildFailed(f"cannot write the trained intent checkpoint to {out_dir}: {exc}") from exc
    return summary


def recipe_for(variant: str, **overrides: Any) -> IntentRecipe:
    """The recipe of a named variant (base, retrained, slow, damaged), optionally changed."""
    if variant not in RECIPES:
        raise BadOption(f"unknown intent variant {variant!r}; choose one of {sorted(RECIPES)}")
    return replace(RECIPES[variant], **overrides)
