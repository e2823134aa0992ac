"""Packing against a plain-Python reference: segments, positions, targets, masks, latents."""

from __future__ import annotations

import numpy as np
import pytest

from latentlm_jax.data.packing import (
    LATENT_KEYS,
    TEXT_KEYS,
    Document,
    DocumentTooLong,
    DocumentTooManyTargets,
    RowPacker,
    pack_documents,
)
from latentlm_jax.modality import AUDIO, IMAGE

LATENT = 7  # <latent>
BOS, EOS, BOI, EOI, BOA, EOA = 1, 2, 3, 4, 5, 6


def reference_pack(docs, seq_len, latent_dim, budget=None):
    """Loop-by-loop packing: greedy rows (closed also when a modality's latent targets, one per
    <latent> token, would pass ``budget[modality]``); every field computed element by element."""
    budget = budget or {}
    rows, row, used, targets = [], [], 0, {}
    for doc in docs:
        mods = [m for m, z in zip(doc.modalities, doc.latents, strict=True) for _ in z]
        over = any(m in budget and targets.get(m, 0) + mods.count(m) > budget[m] for m in mods)
        if used + len(doc.tokens) > seq_len or over:
            rows.append(row)
            row, used, targets = [], 0, {}
        row.append(doc)
        used += len(doc.tokens)
        for m in mods:
            targets[m] = targets.get(m, 0) + 1
    if row:
        rows.append(row)
    out = {k: [] for k in TEXT_KEYS + (LATENT_KEYS if latent_dim else ())}
    for row in rows:
        r = {k: [0] * seq_len for k in out}
        r["latents"] = [[0.0] * latent_dim for _ in range(seq_len)]
        p = 0
        for seg, doc in enumerate(row, start=1):
            # element-wise modality and latent vectors of this document
            mods, vecs = [], []
            spans = [(m, z.tolist()) for m, z in zip(doc.modalities, doc.latents, strict=True)]
            queue = [(m, v) for m, z in spans for v in z]
            for t in doc.tokens:
                if t == LATENT:
                    m, v = queue.pop(0)
                    mods.append(m)
                    vecs.append(v + [0.0] * (latent_dim - len(v)))
                else:
                    mods.append(0)
                    vecs.append([0.0] * latent_dim)
            n = len(doc.tokens)
            for i in range(n):
                last = i == n - 1
                nxt_mod = 0 if last else mods[i + 1]
                r["tokens"][p] = int(doc.tokens[i])
                r["targets"][p] = 0 if last else int(doc.tokens[i + 1])
                r["ce_mask"][p] = (not last) and nxt_mod in (0, AUDIO)
                r["segment_ids"][p] = seg
                r["positions"][p] = i
                if latent_dim:
                    r["modality"][p] = mods[i]
                    r["latents"][p] = vecs[i]
                    r["latent_mask"][p] = nxt_mod != 0
                    r["latent_modality"][p] = nxt_mod
                p += 1
        for k in out:
            out[k].append(r[k])
    return {k: np.array(v) for k, v in out.items()}


def random_docs(rng, n, seq_len, latent_dim, multimodal):
    docs = []
    for _ in range(n):
        ids = [BOS, *rng.integers(8, 264, rng.integers(0, seq_len // 3))]
        latents, mods = [], []
        if multimodal:
            for _ in range(rng.integers(0, 3)):
                mod = int(rng.choice([IMAGE, AUDIO]))
                k = int(rng.integers(1, 6))
                d = int(rng.integers(1, latent_dim + 1))
                ids += [BOI if mod == IMAGE else BOA, *[LATENT] * k, EOI if mod == IMAGE else EOA]
                ids += list(rng.integers(8, 264, rng.integers(0, 4)))
                latents.append(rng.normal(size=(k, d)).astype(np.float32))
                mods.append(mod)
        ids.append(EOS)
        docs.append(Document(np.array(ids[:seq_len], np.int32), tuple(latents), tuple(mods))
                    if len(ids) <= seq_len else Document(np.array([BOS, EOS], np.int32)))
    return docs


@pytest.mark.parametrize("seed", range(4))
def test_text_packing_matches_reference(seed):
    rng = np.random.default_rng(seed)
    seq_len = 32
    docs = random_docs(rng, 40, seq_len, 0, multimodal=False)
    got = pack_documents(docs, seq_len, latent_id=LATENT)
    want = reference_pack(docs, seq_len, 0)
    assert set(got) == set(TEXT_KEYS)
    for k in TEXT_KEYS:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got["tokens"].dtype == np.int32 and got["ce_mask"].dtype == bool
    assert got["segment_ids"].dtype == np.int32 and got["positions"].dtype == np.int32


@pytest.mark.parametrize("seed", range(4))
def test_multimodal_packing_matches_reference(seed):
    rng = np.random.default_rng(100 + seed)
    seq_len, dim = 48, 5
    docs = random_docs(rng, 30, seq_len, dim, multimodal=True)
    assert any(d.latents for d in docs)
    got = pack_documents(docs, seq_len, latent_id=LATENT, latent_dim=dim)
    want = reference_pack(docs, seq_len, dim)
    assert set(got) == set(TEXT_KEYS + LATENT_KEYS)
    for k in TEXT_KEYS + LATENT_KEYS:
        np.testing.assert_allclose(got[k], want[k], err_msg=k)
    assert got["latents"].dtype == np.float32 and got["latents"].shape[-1] == dim
    assert got["modality"].dtype == np.int8 and got["latent_modality"].dtype == np.int8
    assert got["latent_mask"].dtype == bool


def test_invariants_targets_stay_inside_documents():
    rng = np.random.default_rng(7)
    docs = random_docs(rng, 60, 40, 4, multimodal=True)
    b = pack_documents(docs, 40, latent_id=LATENT, latent_dim=4)
    seg, tok, tgt, ce = b["segment_ids"], b["tokens"], b["targets"], b["ce_mask"]
    nxt_seg = np.pad(seg[:, 1:], ((0, 0), (0, 1)))
    nxt_tok = np.pad(tok[:, 1:], ((0, 0), (0, 1)))
    same = (seg > 0) & (nxt_seg == seg)
    # targets are the next token of the same document, 0 at each document's last element
    np.testing.assert_array_equal(tgt, np.where(same, nxt_tok, 0))
    assert not (ce & ~same).any() and not (b["latent_mask"] & ~same).any()
    # padding is all zeros
    pad = seg == 0
    for k in b:
        assert not np.any(b[k][pad]), k
    # positions restart at 0 for each document and count up
    for r in range(seg.shape[0]):
        for s in set(seg[r].tolist()) - {0}:
            np.testing.assert_array_equal(b["positions"][r][seg[r] == s],
                                          np.arange((seg[r] == s).sum()))
    # the rows hold the documents in order
    flat = [tok[r][seg[r] == s].tolist() for r in range(seg.shape[0])
            for s in range(1, seg[r].max() + 1)]
    assert flat == [d.tokens.tolist() for d in docs]


def test_audio_and_image_targets():
    # <bos> t <boi> z z <eoi> <boa> a a <eoa> <eos>
    ids = np.array([BOS, 50, BOI, LATENT, LATENT, EOI, BOA, LATENT, LATENT, EOA, EOS], np.int32)
    img = np.arange(6, dtype=np.float32).reshape(2, 3)
    aud = -np.arange(8, dtype=np.float32).reshape(2, 4)
    b = pack_documents([Document(ids, (img, aud), (IMAGE, AUDIO))], 12, latent_id=LATENT,
                       latent_dim=4)
    ce, lm, lmod = b["ce_mask"][0], b["latent_mask"][0], b["latent_modality"][0]
    # the element before each image latent: diffusion target only
    assert ce.tolist()[:11] == [1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    assert lm.tolist()[:11] == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0]
    assert lmod.tolist()[:11] == [0, 0, 1, 1, 0, 0, 2, 2, 0, 0, 0]
    assert b["modality"][0].tolist()[:11] == [0, 0, 0, 1, 1, 0, 0, 2, 2, 0, 0]
    # the audio "continue" target is <latent>, then <eoa>
    assert b["targets"][0][6:9].tolist() == [LATENT, LATENT, EOA]
    np.testing.assert_array_equal(b["latents"][0][3:5, :3], img)
    np.testing.assert_array_equal(b["latents"][0][3:5, 3], 0)
    np.testing.assert_array_equal(b["latents"][0][7:9], aud)


def test_too_long_is_reported_not_truncated():
    packer = RowPacker(8, latent_id=LATENT)
    exact = Document(np.arange(8, dtype=np.int32) + 8, source="doc-a")
    assert packer.add(exact) and packer.used == 8
    with pytest.raises(DocumentTooLong) as info:
        packer.add(Document(np.arange(9, dtype=np.int32) + 8, source="doc-b"))
    assert info.value.length == 9 and info.value.seq_len == 8 and "doc-b" in str(info.value)
    assert packer.used == 8  # unchanged
    with pytest.raises(DocumentTooLong):
        pack_documents([exact, Document(np.ones(20, np.int32))], 8, latent_id=LATENT)


def test_greedy_row_boundaries():
    docs = [Document(np.full(n, 9, np.int32)) for n in (5, 4, 3, 8, 1)]
    b = pack_documents(docs, 8, latent_id=LATENT)
    assert b["segment_ids"].tolist() == [
        [1, 1, 1, 1, 1, 0, 0, 0],  # 5; 4 does not fit
        [1, 1, 1, 1, 2, 2, 2, 0],  # 4 + 3; 8 does not fit
        [1] * 8,
        [1, 0, 0, 0, 0, 0, 0, 0],
    ]


def test_bad_documents_raise():
    with pytest.raises(ValueError, match="latent vectors"):
        pack_documents([Document(np.array([BOS, LATENT, EOS], np.int32))], 8, latent_id=LATENT,
                       latent_dim=2)
    with pytest.raises(ValueError, match="latent_dim=0"):
        pack_documents([Document(np.array([BOS, LATENT, EOS], np.int32),
                                 (np.zeros((1, 2), np.float32),), (IMAGE,))], 8, latent_id=LATENT)
    with pytest.raises(ValueError, match="do not fit"):
        pack_documents([Document(np.array([BOS, LATENT, EOS], np.int32),
                                 (np.zeros((1, 3), np.float32),), (IMAGE,))], 8, latent_id=LATENT,
                       latent_dim=2)
    with pytest.raises(ValueError, match="contiguous"):
        pack_documents([Document(np.array([BOS, LATENT, 9, LATENT, EOS], np.int32),
                                 (np.zeros((2, 2), np.float32),), (IMAGE,))], 8, latent_id=LATENT,
                       latent_dim=2)


# ------------------------------------------------------------------------------ target budget
@pytest.mark.parametrize("seed", range(4))
def test_budgeted_packing_matches_reference(seed):
    """With a per-row target budget rows close earlier; every field still matches, no row holds
    more targets of a modality than its slots, and the documents stay in order."""
    rng = np.random.default_rng(200 + seed)
    seq_len, dim = 48, 5
    docs = random_docs(rng, 60, seq_len, dim, multimodal=True)
    budget = {IMAGE: 6, AUDIO: 5}
    docs = [d for d in docs if all(k <= budget[m] for m, k in d.targets().items())]
    got = pack_documents(docs, seq_len, latent_id=LATENT, latent_dim=dim, target_budget=budget)
    want = reference_pack(docs, seq_len, dim, budget)
    for k in TEXT_KEYS + LATENT_KEYS:
        np.testing.assert_allclose(got[k], want[k], err_msg=k)
    for m, slots in budget.items():
        per_row = (got["latent_mask"] & (got["latent_modality"] == m)).sum(axis=1)
        assert per_row.max() <= slots
    # the budget is what closed some rows: without it there are fewer rows, and fuller ones
    free = pack_documents(docs, seq_len, latent_id=LATENT, latent_dim=dim)
    assert len(free["tokens"]) < len(got["tokens"])
    assert max((free["latent_mask"] & (free["latent_modality"] == m)).sum(axis=1).max() - s
               for m, s in budget.items()) > 0


def test_document_targets_are_its_latent_mask():
    rng = np.random.default_rng(3)
    for doc in random_docs(rng, 40, 48, 5, multimodal=True):
        b = pack_documents([doc], 48, latent_id=LATENT, latent_dim=5)
        for m in (IMAGE, AUDIO):
            count = int((b["latent_mask"] & (b["latent_modality"] == m)).sum())
            assert doc.targets().get(m, 0) == count


def image_doc(k, caption=0):
    ids = np.array([BOS, *[9] * caption, BOI, *[LATENT] * k, EOI, EOS], np.int32)
    return Document(ids, (np.ones((k, 2), np.float32),), (IMAGE,), source=f"img{k}")


def test_the_budget_closes_the_row_and_refuses_what_never_fits():
    packer = RowPacker(64, latent_id=LATENT, latent_dim=2, target_budget={IMAGE: 8})
    assert packer.add(image_doc(5)) and packer.targets == {IMAGE: 5}
    used = packer.used
    assert not packer.add(image_doc(4))  # 9 > 8 slots: the row closes, nothing changed
    assert packer.used == used and packer.targets == {IMAGE: 5}
    assert packer.add(image_doc(3)) and packer.targets == {IMAGE: 8}  # exactly the budget
    packer.flush()
    assert packer.targets == {} and packer.add(image_doc(4))
    with pytest.raises(DocumentTooManyTargets) as info:  # alone over the budget: never fits
        packer.check(image_doc(9))
    e = info.value
    assert (e.modality, e.targets, e.slots) == (IMAGE, 9, 8) and "img9" in str(e)
    with pytest.raises(DocumentTooManyTargets):
        pack_documents([image_doc(9)], 64, latent_id=LATENT, latent_dim=2,
                       target_budget={IMAGE: 8})
    # a budget of another modality does not bound image targets; no budget: length alone
    for budget in ({AUDIO: 1}, None):
        b = pack_documents([image_doc(9)] * 3, 64, latent_id=LATENT, latent_dim=2,
                           target_budget=budget)
        assert len(b["tokens"]) == 1
    with pytest.raises(ValueError, match="positive"):
        RowPacker(8, latent_id=LATENT, target_budget={IMAGE: 0})
