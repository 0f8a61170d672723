"""Splitting a length-less dataset between processes (``IterableDatasetShard``), without processes: the
shards of all ranks together must cover the stream, be disjoint within each full chunk, and have equal
sizes, or DDP would hang on the rank with more batches."""

from __future__ import annotations

import pytest

from tracklink.trainer.data import IterableDatasetShard


def shards(data: list[int], batch_size: int, world: int, drop_last: bool = False) -> list[list[int]]:
    return [list(IterableDatasetShard(data, batch_size, num_processes=world, process_index=rank,
                                      drop_last=drop_last)) for rank in range(world)]


@pytest.mark.parametrize(("length", "batch_size", "world"), [(22, 4, 2), (24, 4, 2), (7, 2, 3), (3, 4, 2), (1, 1, 4)])
def test_shards_cover_the_stream_with_equal_sizes(length: int, batch_size: int, world: int) -> None:
    data = list(range(length))
    parts = shards(data, batch_size, world)
    assert len({len(p) for p in parts}) == 1
    assert set().union(*parts) == set(data)
    assert len(parts[0]) % batch_size == 0
    full = (length // (batch_size * world)) * batch_size  # the samples of each rank from full chunks
    assert sorted(x for p in parts for x in p[:full]) == data[: full * world]
    assert len(parts[0]) == len(IterableDatasetShard(data, batch_size, num_processes=world, process_index=0))


def test_drop_last_drops_the_short_chunk() -> None:
    assert shards(list(range(22)), 4, 2, drop_last=True) == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]
    assert shards(list(range(3)), 4, 2, drop_last=True) == [[], []]
    assert len(IterableDatasetShard(list(range(22)), 4, num_processes=2, process_index=1, drop_last=True)) == 8


def test_a_stream_without_length_has_no_length() -> None:
    shard = IterableDatasetShard(iter(range(5)), 2, num_processes=2, process_index=0)
    with pytest.raises(TypeError):
        len(shard)
    assert list(shard) == [0, 1, 4, 0]


def test_set_epoch_reaches_the_dataset() -> None:
    class Epochs(list):
        epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    data = Epochs(range(4))
    shard = IterableDatasetShard(data, 2, num_processes=2, process_index=0)
    shard.set_epoch(3)
    assert data.epoch == 3 and shard.epoch == 3


@pytest.mark.parametrize("index", [-1, 2])
def test_bad_process_index(index: int) -> None:
    with pytest.raises(ValueError, match=rf"process_index={index} is not in \[0, 2\)"):
        IterableDatasetShard([], 1, num_processes=2, process_index=index)


@pytest.mark.parametrize(("length", "batch_size", "world"),
                         [(22, 4, 2), (24, 4, 2), (7, 2, 3), (3, 4, 2), (1, 1, 4), (13, 3, 4), (0, 2, 2)])
def test_uneven_shards_hold_each_sample_once_in_single_process_batches(length: int, batch_size: int,
                                                                        world: int) -> None:
    """Evaluation's split (``even_batches=False``): no sample is repeated, and taking batch ``k`` of each
    rank in turn gives the batches one process would read, in order."""
    data = list(range(length))
    parts = [IterableDatasetShard(data, batch_size, num_processes=world, process_index=rank, even_batches=False)
             for rank in range(world)]
    samples = [list(p) for p in parts]
    assert sorted(x for s in samples for x in s) == data
    assert [len(p) for p in parts] == [len(s) for s in samples]
    batches = [[s[i:i + batch_size] for i in range(0, len(s), batch_size)] for s in samples]
    interleaved = [b[k] for k in range(max(map(len, batches))) for b in batches if k < len(b)]
    assert interleaved == [data[i:i + batch_size] for i in range(0, length, batch_size)]


def test_uneven_shards_of_a_short_last_chunk() -> None:
    parts = [list(IterableDatasetShard(list(range(22)), 4, num_processes=3, process_index=rank, even_batches=False))
             for rank in range(3)]
    assert parts == [[0, 1, 2, 3, 12, 13, 14, 15], [4, 5, 6, 7, 16, 17, 18, 19], [8, 9, 10, 11, 20, 21]]
