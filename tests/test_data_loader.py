"""The training-window loader: per-epoch offsets, per-rank sharding, exact resume, document masking."""

import numpy as np
import pytest
import torch

from rain.config import ModelConfig
from rain.data.loader import WindowLoader, document_ids
from rain.errors import RainError
from rain.model.transformer import Transformer

SEQ = 16


def numbered_shards():
    """Token value = position in the corpus, so a window says where it came from."""
    return [np.arange(0, 1000, dtype=np.uint32), np.arange(1000, 1716, dtype=np.uint32)]


def starts(loader, batches):
    return [int(t) for _ in range(batches) for t in loader.next_batch()[0][:, 0]]


def test_resume_from_state_continues_exactly():
    a = WindowLoader(numbered_shards(), SEQ, 4, seed=3)
    for _ in range(30):  # past the end of the first epoch
        a.next_batch()
    b = WindowLoader(numbered_shards(), SEQ, 4, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])  # targets are the inputs shifted by one


def test_an_epoch_covers_every_window_once_split_across_ranks():
    loaders = [WindowLoader(numbered_shards(), SEQ, 2, seed=1, rank=r, world=2) for r in range(2)]
    per_epoch = loaders[0].windows_per_epoch()
    seen = [set(starts(loader, per_epoch // 4)) for loader in loaders]
    assert not seen[0] & seen[1]
    everything = seen[0] | seen[1]
    assert len(everything) == per_epoch
    assert len({(s - 1000 * (s >= 1000)) % SEQ for s in everything}) == 1  # one random offset for the epoch
    assert all(s + SEQ < 1000 or s >= 1000 for s in everything)  # windows never cross shards


def test_each_epoch_draws_a_new_offset_and_order():
    loader = WindowLoader(numbered_shards(), SEQ, 1, seed=0)
    n = loader.windows_per_epoch()
    epochs = [starts(loader, n) for _ in range(4)]
    assert len({tuple(e) for e in epochs}) == 4
    assert len({min(e) % SEQ for e in epochs}) > 1


def test_resuming_with_other_settings_is_refused_and_other_world_sizes_continue():
    a = WindowLoader(numbered_shards(), SEQ, 4, seed=3)
    a.next_batch()
    with pytest.raises(RainError, match="seq_len was 16, now 8"):
        WindowLoader(numbered_shards(), 8, 4, seed=3).load_state_dict(a.state_dict())
    with pytest.raises(RainError, match="seed was 3"):
        WindowLoader(numbered_shards(), SEQ, 4, seed=4).load_state_dict(a.state_dict())
    two = [WindowLoader(numbered_shards(), SEQ, 2, seed=3, rank=r, world=2) for r in range(2)]
    for loader in two:
        loader.load_state_dict(a.state_dict())
    nxt = a.next_batch()[0][:, 0].tolist()
    got = [two[0].next_batch()[0][:, 0].tolist(), two[1].next_batch()[0][:, 0].tolist()]
    assert sorted(got[0] + got[1]) == sorted(nxt)


def test_document_ids_start_a_document_at_each_end_of_text():
    eot = 0
    x = torch.tensor([[5, 6, 0, 7, 8, 0, 9]])
    assert document_ids(x, eot).tolist() == [[0, 0, 1, 1, 1, 2, 2]]


def test_document_masking_equals_separate_forward_passes():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=64, context=48)
    model = Transformer(cfg).eval()
    eot = 0
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 64, size=n) for n in (9, 3, 17, 1, 30, 12, 25)]
    stream = np.concatenate([np.append(d, eot) for d in docs]).astype(np.uint16)
    loader = WindowLoader([stream], 40, 2, seed=0)
    x, _ = loader.next_batch()
    doc = document_ids(x, eot)
    with torch.no_grad():
        masked = model(x, doc_ids=doc)
        for row in range(x.shape[0]):
            assert doc[row].max() > 0  # the window spans several documents
            for d in doc[row].unique():
                idx = (doc[row] == d).nonzero().flatten()
                alone = model(x[row : row + 1, idx])
                torch.testing.assert_close(masked[row, idx], alone[0], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(model(x), masked, atol=1e-3)  # without the mask the documents do see each other
