"""Relation prompts for the teacher, with the (triplet, role) of every token.

``"<subject> is <predicate> <object>, <subject> is <predicate> <object>, ..."``, truncated to the text
encoder's token limit (start and end tokens included) keeping whole triplets only. The prompt is tokenized
piece by piece (subject, ``is``, predicate, object, ``,``), so a word split into several BPE pieces gives all of
them its role; for CLIP's BPE (words and punctuation are tokenized independently) the concatenated pieces are
exactly the ids of the full text.

Roles: ``ROLE_OTHER = 0`` (start/end, padding, ``is``, commas), ``ROLE_SUBJECT = 1``, ``ROLE_PREDICATE = 2``,
``ROLE_OBJECT = 3``. Works with transformers' ``CLIPTokenizer`` and with ``open_clip``'s ``SimpleTokenizer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

ROLE_OTHER, ROLE_SUBJECT, ROLE_PREDICATE, ROLE_OBJECT = 0, 1, 2, 3
ROLE_NAMES = ("other", "subject", "predicate", "object")


@dataclass
class RelationPrompt:
    """A relation prompt. Tensors are [T] (T = the tokenizer's model max length), padded after ``length``.

    Attributes:
        text: the prompt text (only the kept triplets).
        token_ids: [T] long, start + pieces + end, then padding.
        triplet_index: [T] long, index of the triplet a token belongs to, -1 for others.
        role: [T] long, one of ``ROLE_*``.
        num_triplets_kept: how many leading triplets fitted.
        length: number of real tokens, start/end included.
    """

    text: str
    token_ids: Tensor
    triplet_index: Tensor
    role: Tensor
    num_triplets_kept: int
    length: int

    def token_mask(self, triplet: int, role: int) -> Tensor:
        """[T] bool: the tokens of ``role`` in triplet ``triplet`` (e.g. the subject of triplet k)."""
        return (self.triplet_index == triplet) & (self.role == role)


def _special_ids(tokenizer: Any) -> tuple[int, int, int, int]:
    """(start id, end id, pad id, model max length) of a HF or open_clip tokenizer."""
    if hasattr(tokenizer, "sot_token_id"):  # open_clip SimpleTokenizer
        return tokenizer.sot_token_id, tokenizer.eot_token_id, 0, tokenizer.context_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return tokenizer.bos_token_id, tokenizer.eos_token_id, pad, tokenizer.model_max_length


def _piece_ids(tokenizer: Any, text: str) -> list[int]:
    if hasattr(tokenizer, "sot_token_id"):
        return list(tokenizer.encode(text))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_relation_prompt(triplets: list[tuple[str, str, str]], tokenizer: Any,
                          max_tokens: int | None = None) -> RelationPrompt:
    """Build the prompt of ``triplets`` [(subject, predicate, object) readable names, ...].

    ``max_tokens`` (default: the tokenizer's model max length) bounds ``length``; triplets that do not fit
    whole are dropped (with the first one too long, the prompt is empty: start and end tokens only).
    """
    bos, eos, pad, model_max = _special_ids(tokenizer)
    max_tokens = model_max if max_tokens is None else int(max_tokens)
    if not 2 <= max_tokens <= model_max:
        raise ValueError(f"max_tokens must be in [2, {model_max}] (start/end included), got {max_tokens}")
    ids, trip, role, texts = [bos], [-1], [ROLE_OTHER], []
    for k, triplet in enumerate(triplets):
        if len(triplet) != 3 or not all(isinstance(n, str) and n.strip() for n in triplet):
            raise ValueError(f"triplets[{k}] must be 3 non-empty strings (subject, predicate, object), got {triplet!r}")
        subj, pred, obj = (n.strip() for n in triplet)
        pieces = ([(",", ROLE_OTHER)] if k else []) + [
            (subj, ROLE_SUBJECT), ("is", ROLE_OTHER), (pred, ROLE_PREDICATE), (obj, ROLE_OBJECT)]
        new_ids, new_trip, new_role = [], [], []
        for text, r in pieces:
            p = _piece_ids(tokenizer, text)
            new_ids += p
            new_trip += [k if r != ROLE_OTHER else -1] * len(p)
            new_role += [r] * len(p)
        if len(ids) + len(new_ids) + 1 > max_tokens:
            break
        ids, trip, role = ids + new_ids, trip + new_trip, role + new_role
        texts.append(f"{subj} is {pred} {obj}")
    ids, trip, role = [*ids, eos], [*trip, -1], [*role, ROLE_OTHER]
    length, padding = len(ids), model_max - len(ids)
    return RelationPrompt(
        text=", ".join(texts),
        token_ids=torch.tensor(ids + [pad] * padding, dtype=torch.long),
        triplet_index=torch.tensor(trip + [-1] * padding, dtype=torch.long),
        role=torch.tensor(role + [ROLE_OTHER] * padding, dtype=torch.long),
        num_triplets_kept=len(texts),
        length=length,
    )
