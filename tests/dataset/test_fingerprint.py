import errno
import marshal
import os
import shutil
from pathlib import Path

import pytest

from dataset import fingerprint as fpmod
from dataset import native
from dataset.fingerprint import StatCache, diff, fingerprint


def test_identical_content_under_a_new_mtime_keeps_the_digest(dataset):
    before = fingerprint(dataset)
    for f in dataset.iterdir():
        os.utime(f, (1_000_000, 1_000_000))
    assert fingerprint(dataset).digest == before.digest


def test_any_content_change_changes_the_digest(dataset):
    before = fingerprint(dataset)
    target = dataset / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes() + b"x")
    assert fingerprint(dataset).digest != before.digest


def test_unchanged_files_are_not_read_again(dataset, tmp_path, monkeypatch):
    cache = StatCache(tmp_path / "stat.json")
    fingerprint(dataset, cache)
    reads = []
    real_read, real_hash = native.read_files, fpmod.hash_file
    monkeypatch.setattr(native, "read_files", lambda ps, sizes: reads.extend(ps) or real_read(ps, sizes))
    monkeypatch.setattr(fpmod, "hash_file", lambda p, size=None: reads.append(p) or real_hash(p, size))
    fingerprint(dataset, StatCache(tmp_path / "stat.json"))  # reloaded from disk, as on restart
    assert reads == []
    (dataset / "increments" / "b1").mkdir(parents=True)
    (dataset / "increments" / "b1" / "new.png").write_bytes(b"png")
    fingerprint(dataset, StatCache(tmp_path / "stat.json"))
    assert [Path(p).name for p in reads] == ["new.png"]


def test_the_small_files_read_are_kept_for_the_ingestion_and_unchanged_ones_are_not(dataset, tmp_path):
    cache = StatCache(tmp_path / "stat.json")
    fingerprint(dataset, cache)
    (dataset / "increments" / "b1").mkdir(parents=True)
    (dataset / "increments" / "b1" / "new.png").write_bytes(b"png bytes")
    (dataset / "increments" / "b1" / "big.png").write_bytes(b"x" * (fpmod.KEEP_FILE + 1))
    second = fingerprint(dataset, cache)
    assert second.contents == {"increments/b1/new.png": b"png bytes"}  # only what was read
    assert fingerprint(dataset, cache).contents == {}  # vouched for by the stat cache: not read
    assert second == fingerprint(dataset)  # the bytes kept are not part of the value


def test_what_a_fingerprint_keeps_is_bounded(dataset, monkeypatch):
    folder = dataset / "increments" / "b1"
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"{i}.png").write_bytes(b"0123456789")
    monkeypatch.setattr(fpmod, "KEEP_BYTES", 35)
    fp = fingerprint(dataset)
    assert sorted(fp.contents) == [f"increments/b1/{i}.png" for i in range(3)]
    assert {f.path for f in fp.files} >= {f"increments/b1/{i}.png" for i in range(5)}


def test_diff_names_added_changed_and_removed(dataset):
    before = fingerprint(dataset)
    (dataset / "extra.txt").write_text("hi")
    (dataset / "train-labels-idx1-ubyte.gz").write_bytes(b"changed")
    (dataset / "t10k-labels-idx1-ubyte.gz").unlink()
    changes = diff(before, fingerprint(dataset))
    assert changes.added == ("extra.txt",)
    assert changes.changed == ("train-labels-idx1-ubyte.gz",)
    assert changes.removed == ("t10k-labels-idx1-ubyte.gz",)


def test_partial_and_hidden_files_are_ignored(dataset):
    before = fingerprint(dataset).digest
    (dataset / "upload.png.part").write_bytes(b"half")
    (dataset / ".DS_Store").write_bytes(b"mac")
    assert fingerprint(dataset).digest == before


def test_a_stat_cache_in_another_format_is_an_empty_cache(dataset, tmp_path):
    expected = fingerprint(dataset).digest

    from dataset.fingerprint import _FORMAT

    name = "train-images-idx3-ubyte.gz"
    odd_entries = (  # in the cache's own format, entries of any other shape
        _framed((_FORMAT, [name])), _framed((_FORMAT, {name: 5})),
        _framed((_FORMAT, {name: [1, 2]})), _framed((_FORMAT, {name: (1, 2, 3, 4)})),
        _framed((_FORMAT, {name: None})), _framed(("retrain-statcache-1", {name: [1, 2, 3, "0"]})))
    for content in (b'{"train-images-idx3-ubyte.gz": [1, 2, 3, "00"]}', b"\x00damaged", b"",
                    marshal.dumps(("retrain-statcache-1", {})), (1 << 62).to_bytes(8, "little"),
                    *odd_entries):
        (tmp_path / "stat").write_bytes(content)
        cache = StatCache(tmp_path / "stat")
        assert fingerprint(dataset, cache).digest == expected
        st = (dataset / "train-labels-idx1-ubyte.gz").stat()
        assert StatCache(tmp_path / "stat").lookup(  # rewritten in its own format
            "train-labels-idx1-ubyte.gz", st.st_size, st.st_mtime_ns, st.st_ino)


def _framed(value) -> bytes:
    data = marshal.dumps(value)
    return len(data).to_bytes(8, "little") + data


def _records(path: Path) -> list[dict]:
    """The entries of each record of a stat cache file."""
    data, at, records = path.read_bytes(), 0, []
    while at < len(data):
        size = int.from_bytes(data[at:at + 8], "little")
        records.append(marshal.loads(data[at + 8:at + 8 + size])[1])
        at += 8 + size
    return records


def _push(dataset, batch: str, n: int) -> None:
    folder = dataset / "increments" / batch / "bag"
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"{batch}-{i:04d}.png").write_bytes(f"{batch} {i}".encode())


def test_a_run_writes_to_the_stat_cache_what_changed_not_the_whole_cache(dataset, tmp_path,
                                                                        monkeypatch):
    path = tmp_path / "stat"
    _push(dataset, "b1", 200)
    fingerprint(dataset, StatCache(path))
    first = path.stat().st_size
    fingerprint(dataset, StatCache(path))  # nothing changed: nothing written
    assert path.stat().st_size == first
    _push(dataset, "b2", 10)
    fingerprint(dataset, StatCache(path))
    grown = path.stat().st_size - first
    assert 0 < grown < first / 10  # ten entries appended, not 214 written again
    (dataset / "increments" / "b2" / "bag" / "b2-0000.png").unlink()  # a removal is recorded
    expected = fingerprint(dataset, StatCache(path))
    assert path.stat().st_size > first + grown
    reads = []
    real = native.read_files
    monkeypatch.setattr(native, "read_files", lambda ps, sizes: reads.extend(ps) or real(ps, sizes))
    again = fingerprint(dataset, StatCache(path))  # every record loaded: nothing read
    assert reads == [] and again == expected
    assert "increments/b2/bag/b2-0000.png" not in StatCache(path)._entries


def test_pushes_that_only_add_files_only_append_to_the_stat_cache(dataset, tmp_path):
    path = tmp_path / "stat"
    fingerprint(dataset, StatCache(path))  # the four base files
    for n in range(5):
        _push(dataset, f"b{n}", 100)
        fingerprint(dataset, StatCache(path))
    assert [len(r) for r in _records(path)] == [4, 100, 100, 100, 100, 100]  # nothing twice


def test_the_stat_cache_is_written_anew_once_what_was_appended_outweighs_it(dataset, tmp_path):
    path = tmp_path / "stat"
    _push(dataset, "first", 40)
    fingerprint(dataset, StatCache(path))  # the four base files and 40: 44 entries
    loaded = []
    for n in range(6):  # each push replaces the one before: 3 entries removed, 3 added
        if n:
            shutil.rmtree(dataset / "increments" / f"b{n - 1}")
        _push(dataset, f"b{n}", 3)
        fingerprint(dataset, StatCache(path))
        loaded.append(StatCache(path))
    assert [cache._appended for cache in loaded] == [3, 9, 0, 6, 0, 6]  # 47 + 6 + 6 > 1.25 * 47
    for cache in loaded:  # what a run loads stays under 1.25 times what is kept
        assert cache._first + cache._appended <= 1.25 * len(cache._entries)
    assert sum(len(r) for r in _records(path)) == loaded[-1]._first + 6
    assert len(loaded[-1]._entries) == 4 + 40 + 3


def test_a_record_cut_short_ends_what_is_loaded_and_the_cache_is_written_anew(dataset, tmp_path):
    path = tmp_path / "stat"
    _push(dataset, "b1", 50)
    fingerprint(dataset, StatCache(path))
    _push(dataset, "b2", 2)
    fingerprint(dataset, StatCache(path))
    with path.open("r+b") as handle:  # a run killed in the middle of its append
        handle.truncate(path.stat().st_size - 5)
    cache = StatCache(path)
    assert "increments/b1/bag/b1-0049.png" in cache._entries
    assert "increments/b2/bag/b2-0001.png" not in cache._entries  # hashed once more
    expected = fingerprint(dataset)
    assert fingerprint(dataset, cache) == expected
    assert StatCache(path)._entries.keys() == {f.path for f in expected.files}  # whole again


def test_two_runs_that_loaded_one_stat_cache_both_add_their_records(dataset, tmp_path):
    path = tmp_path / "stat"
    _push(dataset, "b1", 100)
    fingerprint(dataset, StatCache(path))
    caches = [StatCache(path), StatCache(path)]  # both loaded before either saves
    for n, cache in enumerate(caches):
        cache.store(f"x{n}", 1, 2, 3, "f" * 64)
    for cache in caches:
        cache.save()
    loaded = StatCache(path)
    assert loaded.lookup("x0", 1, 2, 3) == loaded.lookup("x1", 1, 2, 3) == "f" * 64


def test_a_stat_cache_removed_since_it_was_loaded_is_written_anew(dataset, tmp_path):
    path = tmp_path / "stat"
    _push(dataset, "b1", 20)
    cache = StatCache(path)  # a watcher's: one cache for its whole life
    fingerprint(dataset, cache)
    path.unlink()  # an operator's reset, a cleaner
    _push(dataset, "b2", 1)
    expected = fingerprint(dataset, cache)
    assert StatCache(path)._entries.keys() == {f.path for f in expected.files}


def test_a_stat_cache_is_written_anew_when_the_data_shrinks(dataset, tmp_path):
    path = tmp_path / "stat"
    _push(dataset, "b1", 40)
    fingerprint(dataset, StatCache(path))
    shutil.rmtree(dataset / "increments")  # 40 removals: fewer than the first record's 44
    fingerprint(dataset, StatCache(path))
    assert len(_records(path)) == 1 and len(_records(path)[0]) == 4  # not 44 loaded for 4


def test_a_fingerprint_keeps_the_bytes_it_read_only_when_asked(dataset):
    (dataset / "increments" / "b1").mkdir(parents=True)
    (dataset / "increments" / "b1" / "a.png").write_bytes(b"png bytes")
    kept = fingerprint(dataset)
    assert kept.contents["increments/b1/a.png"] == b"png bytes"
    bare = fingerprint(dataset, keep_contents=False)  # the watcher's: digests compared only
    assert bare.contents == {} and bare.digest == kept.digest and bare.files == kept.files


def test_a_file_name_that_is_not_utf8_is_fingerprinted_by_its_bytes(dataset):
    folder = dataset / "increments" / "b1"
    folder.mkdir(parents=True)
    with open(os.fsencode(str(folder)) + b"/caf\xe9.png", "wb") as handle:  # Latin-1 bytes
        handle.write(b"png")
    before = fingerprint(dataset)
    assert "increments/b1/caf\udce9.png" in {f.path for f in before.files}
    os.rename(os.fsencode(str(folder)) + b"/caf\xe9.png", os.fsencode(str(folder)) + b"/caf\xe8.png")
    assert fingerprint(dataset).digest != before.digest


def test_a_file_removed_before_it_is_read_is_left_out_and_any_other_failure_raises(dataset,
                                                                                   monkeypatch):
    folder = dataset / "increments" / "b1"
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        (folder / name).write_bytes(name.encode())
    real = fpmod.walk

    def walk_then_remove(root: str):
        found = real(root)
        (folder / "b.png").unlink()
        return found

    monkeypatch.setattr(fpmod, "walk", walk_then_remove)
    cache = StatCache()
    fp = fingerprint(dataset, cache)
    paths = [f.path for f in fp.files]
    assert "increments/b1/a.png" in paths and "increments/b1/c.png" in paths
    assert "increments/b1/b.png" not in paths and "increments/b1/b.png" not in fp.contents
    assert cache.lookup("increments/b1/b.png", 5, 0, 0) is None
    assert fp.contents["increments/b1/c.png"] == b"c.png"  # the bytes are the file's own
    monkeypatch.setattr(fpmod, "walk", real)
    assert fp == fingerprint(dataset)
    monkeypatch.setattr(fpmod, "walk", lambda root: [("x", str(folder), 1, 0, 0)])  # a folder
    with pytest.raises(OSError) as raised:
        fingerprint(dataset)
    assert raised.value.errno == errno.EISDIR and raised.value.filename == str(folder)


def test_a_full_disk_fails_the_save_and_leaves_no_half_written_file(dataset, tmp_path,
                                                                   monkeypatch):
    path = tmp_path / "state" / "stat"
    _push(dataset, "b1", 20)
    fingerprint(dataset, StatCache(path))
    before = path.read_bytes()

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    for change in (lambda: _push(dataset, "b2", 1),  # appended
                   lambda: shutil.rmtree(dataset / "increments")):  # written anew
        change()
        with monkeypatch.context() as patch:
            patch.setattr(os, "write", full)  # an append
            patch.setattr(Path, "write_bytes", lambda self, data: (
                self.open("wb").write(data[:10]), full())[1])  # the whole, cut short
            with pytest.raises(OSError) as raised:
                fingerprint(dataset, StatCache(path))
        assert raised.value.errno == errno.ENOSPC
        assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == ["stat"]
