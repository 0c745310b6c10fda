"""Relation prompts: token ids, (triplet, role) per token, truncation at whole triplets."""

from __future__ import annotations

import open_clip
import pytest
import torch
from transformers import CLIPTokenizer

from spade_core.diffusion.models import write_clip_tokenizer_files
from spade_core.diffusion.prompts import (
    ROLE_OBJECT,
    ROLE_OTHER,
    ROLE_PREDICATE,
    ROLE_SUBJECT,
    build_relation_prompt,
)

O, S, P, B = ROLE_OTHER, ROLE_SUBJECT, ROLE_PREDICATE, ROLE_OBJECT


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tmp_path_factory.mktemp("tok")),
                                         local_files_only=True)


def _ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def test_roles_on_a_hand_made_example(tokenizer):
    p = build_relation_prompt([("person", "riding", "horse"), ("wall", "beside", "playing field")], tokenizer)
    assert p.text == "person is riding horse, wall is beside playing field"
    assert p.num_triplets_kept == 2 and p.length == 12
    # <s> person is riding horse , wall is beside playing field </s>
    assert p.role[:12].tolist() == [O, S, O, P, B, O, S, O, P, B, B, O]
    assert p.triplet_index[:12].tolist() == [-1, 0, -1, 0, 0, -1, 1, -1, 1, 1, 1, -1]
    assert p.token_ids[:12].tolist() == _ids(tokenizer, p.text)
    assert p.token_ids.shape == p.role.shape == p.triplet_index.shape == (77,)
    assert (p.token_ids[12:] == tokenizer.pad_token_id).all() and (p.role[12:] == O).all()
    assert (p.triplet_index[12:] == -1).all()
    assert p.token_mask(1, ROLE_OBJECT).nonzero().flatten().tolist() == [9, 10]


def test_multi_piece_words_keep_their_role(tokenizer):
    p = build_relation_prompt([("xylophonistic dogfish", "parked on", "tv")], tokenizer)
    subj = p.token_mask(0, ROLE_SUBJECT)
    assert int(subj.sum()) > 2  # several BPE pieces, all subject
    assert p.token_ids[: p.length].tolist() == _ids(tokenizer, p.text)
    assert int(p.token_mask(0, ROLE_PREDICATE).sum()) == 2


def test_truncation_keeps_whole_triplets(tokenizer):
    trips = [("person", "riding", "horse"), ("wall", "beside", "playing field")]
    assert build_relation_prompt(trips, tokenizer, max_tokens=12).num_triplets_kept == 2
    p = build_relation_prompt(trips, tokenizer, max_tokens=11)
    assert (p.num_triplets_kept, p.length, p.text) == (1, 6, "person is riding horse")
    assert p.token_ids[:6].tolist() == _ids(tokenizer, p.text) and (p.triplet_index != 1).all()
    empty = build_relation_prompt(trips, tokenizer, max_tokens=5)
    assert (empty.num_triplets_kept, empty.length, empty.text) == (0, 2, "")
    many = build_relation_prompt([("cat", "on", "mat")] * 30, tokenizer)  # 4 tokens, then 5 per triplet
    assert many.num_triplets_kept == 15 and many.length == 76
    assert many.token_ids[:76].tolist() == _ids(tokenizer, many.text)
    assert int((many.role == ROLE_SUBJECT).sum()) == 15 and int(many.triplet_index.max()) == 14


def test_open_clip_tokenizer_gives_the_same_prompt(tokenizer):
    trips = [("Sky", "above", "grass"), ("dog", "in front of", "tree")]
    hf = build_relation_prompt(trips, tokenizer)
    oc = build_relation_prompt(trips, open_clip.tokenizer.SimpleTokenizer())
    n = hf.length
    assert oc.length == n and torch.equal(oc.token_ids[:n], hf.token_ids[:n])
    assert torch.equal(oc.role, hf.role) and torch.equal(oc.triplet_index, hf.triplet_index)
    assert (oc.token_ids[n:] == 0).all()


def test_bad_input(tokenizer):
    with pytest.raises(ValueError, match=r"triplets\[1\]"):
        build_relation_prompt([("a", "b", "c"), ("a", "", "c")], tokenizer)
    with pytest.raises(ValueError, match="max_tokens"):
        build_relation_prompt([("a", "b", "c")], tokenizer, max_tokens=78)
