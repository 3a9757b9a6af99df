"""audit/batching.py: out-of-memory halving shared by the attacks and the attributions."""
import pytest
import torch

from audit.batching import batched, is_oom


def test_batched_halves_on_oom_and_covers_every_index():
    seen, sizes = [], []

    def fn(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        seen.extend(chunk.tolist())

    batched(torch.arange(10), 16, fn)
    assert seen == list(range(10)) and sizes[:4] == [10, 8, 4, 2] and max(sizes[4:]) == 2


def test_other_errors_propagate():
    assert not is_oom(ValueError("out of memory"))
    with pytest.raises(RuntimeError, match="shape"):
        batched(torch.arange(4), 2, lambda c: (_ for _ in ()).throw(RuntimeError("bad shape")))
