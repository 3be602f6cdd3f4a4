"""A word-level Hugging Face fast tokenizer for the demo language.

One token per word of :func:`replaceme.demo.corpus.vocabulary`, plus four
special tokens. Text is lower-cased and split on whitespace; anything outside
the closed vocabulary becomes ``<unk>``. A ``TemplateProcessing``
post-processor puts ``<bos>`` in front of every sequence (it is stored in
``tokenizer.json``, so it survives ``save_pretrained`` /
``AutoTokenizer.from_pretrained`` unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
#: Special tokens take the first ids, in this order.
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_tokenizer(words: Sequence[str] | None = None, model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """A fast tokenizer over ``words`` (default: the demo corpus vocabulary)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if words is None:
        from replaceme.demo.corpus import vocabulary

        words = vocabulary()
    vocab: dict[str, int] = {}
    for word in (*SPECIAL_TOKENS, *words):
        vocab.setdefault(word, len(vocab))

    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B:1",
        special_tokens=[(BOS, vocab[BOS])],
    )
    # Joins tokens with spaces (WordPiece without "##" continuation pieces).
    backend.decoder = decoders.WordPiece(prefix="\x00", cleanup=False)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
