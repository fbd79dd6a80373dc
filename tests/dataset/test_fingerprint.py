import os
from pathlib import Path

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
    import marshal

    from dataset.fingerprint import _FORMAT

    name = "train-images-idx3-ubyte.gz"
    odd_entries = (  # in the cache's own format, entries of any other shape
        marshal.dumps((_FORMAT, [name])), marshal.dumps((_FORMAT, {name: 5})),
        marshal.dumps((_FORMAT, {name: [1, 2]})), marshal.dumps((_FORMAT, {name: (1, 2, 3, 4)})))
    for content in (b'{"train-images-idx3-ubyte.gz": [1, 2, 3, "00"]}', b"\x00damaged", b"",
                    *odd_entries):
        (tmp_path / "stat").write_bytes(content)
        cache = StatCache(tmp_path / "stat")
        assert fingerprint(dataset, cache).digest == expected
        st = (dataset / "train-labels-idx1-ubyte.gz").stat()
        assert StatCache(tmp_path / "stat").lookup(  # rewritten in its own format
            "train-labels-idx1-ubyte.gz", st.st_size, st.st_mtime_ns, st.st_ino)


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
