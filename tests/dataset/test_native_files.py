"""The C reading and scanning of a dataset's files (dataset._native): the same results as the
Python they stand in for (``dataset.native._read``, ``dataset.fingerprint._walk``)."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from dataset import fingerprint as fpmod
from dataset import native
from dataset.fingerprint import IGNORED_SUFFIXES, _walk, fingerprint


def _python_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_native", None)


def _files(folder: Path, count: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(3)
    files = []
    for i in range(count):
        data = rng.integers(0, 256, int(rng.choice([0, 1, 300, 4096, 70_000])), np.uint8).tobytes()
        path = folder / f"f {i}.png"
        path.write_bytes(data)
        files.append((str(path), data))
    return files


def test_many_files_read_whole_on_every_thread_count(tmp_path):
    files = _files(tmp_path, 150)
    paths, sizes = [p for p, _ in files], [len(d) for _, d in files]
    assert native.read_files(paths, sizes) == [d for _, d in files]
    for threads in (0, 1, 3, 8, 100):
        assert native._native.read_files(paths, sizes, threads) == [d for _, d in files], threads
    assert native.read_files([], []) == []


def test_a_failed_file_is_its_errno(tmp_path):
    (tmp_path / "file").write_bytes(b"abc")
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    paths = [str(tmp_path / n) for n in ("missing", "folder", "broken", "file/below", "file")]
    assert native.read_files(paths, [3] * 5) == [errno.ENOENT, errno.EISDIR, errno.ENOENT,
                                                 errno.ENOTDIR, b"abc"]


def test_a_file_that_grew_reads_one_byte_past_its_size_and_one_that_shrank_reads_whole(tmp_path):
    (tmp_path / "grew").write_bytes(b"0123456789")
    (tmp_path / "shrank").write_bytes(b"0123")
    paths = [str(tmp_path / "grew"), str(tmp_path / "shrank")]
    assert native.read_files(paths, [4, 10]) == [b"01234", b"0123"]
    assert native.read_files(paths, [0, 0]) == [b"0", b"0"]


def test_odd_names_and_links_read_as_python_reads_them(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/bad\xff name"
    with open(raw, "wb") as handle:
        handle.write(b"raw")
    (tmp_path / "é ü.png").write_bytes(b"accents")
    (tmp_path / "link").symlink_to(tmp_path / "é ü.png")
    paths = [os.fsdecode(raw), str(tmp_path / "é ü.png"), str(tmp_path / "link")]
    assert native.read_files(paths, [3, 7, 7]) == [b"raw", b"accents", b"accents"]


def test_the_python_fallback_reads_the_same(tmp_path, monkeypatch):
    files = _files(tmp_path, 80)
    (tmp_path / "folder").mkdir()
    paths = [p for p, _ in files] + [str(tmp_path / "missing"), str(tmp_path / "folder")]
    sizes = [len(d) for _, d in files] + [1, 1]
    sizes[0] = max(sizes[0] - 5, 0)  # grew after its size was taken
    in_c = native.read_files(paths, sizes)
    _python_only(monkeypatch)
    assert native.read_files(paths, sizes) == in_c
    assert in_c[-2:] == [errno.ENOENT, errno.EISDIR]


def _tree(root: Path) -> None:
    """A dataset tree with every kind of entry a scan meets."""
    for folder in ("a/b/c", "a/empty", "z", "with space", "é", ".hidden", "a/.git", "odd.tmp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in ("top.png", "a/x.png", "a/b/y.png", "a/b/c/deep.png", "z/last",
                 "with space/a b.png", "é/ü.png", "日本.png", ".hidden/in.png", ".dot.png",
                 "a/.git/config", "odd.tmp/in.png", "B.png", "_under.png", "a/b/c/.DS_Store"):
        (root / name).write_bytes(name.encode())
    for suffix in IGNORED_SUFFIXES:
        (root / f"upload{suffix}").write_bytes(b"partial")
        (root / "a" / f"x.png{suffix}").write_bytes(b"partial")
    for i in range(100):
        (root / "z" / f"{i:03d}.png").write_bytes(bytes(i))
    (root / "to-file").symlink_to(root / "top.png")
    (root / "to-file-relative.png").symlink_to("a/x.png")
    (root / "to-folder").symlink_to(root / "a")
    (root / "broken").symlink_to(root / "nothing")
    (root / ".hidden-link").symlink_to(root / "top.png")
    (root / "link.part").symlink_to(root / "top.png")
    (root / "to-ignored").symlink_to(root / "upload.tmp")
    os.mkfifo(root / "fifo")
    (root / "to-fifo").symlink_to(root / "fifo")
    with open(os.fsencode(str(root)) + b"/z\xffraw.png", "wb") as handle:
        handle.write(b"undecodable name")


def _scanned(root: str) -> list:
    return native.scan(root, IGNORED_SUFFIXES)


def test_a_scan_finds_what_the_python_walk_finds(tmp_path):
    _tree(tmp_path)
    expected = list(_walk(str(tmp_path), ""))
    assert _scanned(str(tmp_path)) == expected
    for threads in (0, 1, 4, 8, 100):
        assert native._native.scan(str(tmp_path), IGNORED_SUFFIXES, threads) == expected, threads
    assert fpmod.walk(str(tmp_path)) == expected
    names = [found[0] for found in expected]
    assert {"to-file", "to-file-relative.png", "to-ignored", "z\udcffraw.png"} <= set(names)
    assert "odd.tmp/in.png" in names and "a/b/c/deep.png" in names and len(names) > 100
    assert not any(n.startswith(("to-folder", "broken", "fifo", "to-fifo", ".")) or
                   "/." in n or n.endswith(IGNORED_SUFFIXES) for n in names)


def test_a_scan_stats_what_the_python_walk_stats(tmp_path):
    _tree(tmp_path)
    os.utime(tmp_path / "a" / "x.png", ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    by_path = {found[0]: found for found in _scanned(str(tmp_path))}
    st = os.stat(tmp_path / "a" / "x.png")
    assert by_path["a/x.png"][1:] == (str(tmp_path / "a" / "x.png"), st.st_size,
                                      1_600_000_000_987_654_321, st.st_ino)
    assert by_path["to-file"][2:] == by_path["top.png"][2:]  # a link is stat'ed through


def test_a_root_with_a_trailing_slash_gives_the_same_relative_paths(tmp_path):
    _tree(tmp_path)
    plain = _scanned(str(tmp_path))
    for root in (str(tmp_path) + "/", str(tmp_path) + "//"):
        slashed = _scanned(root)
        assert slashed == list(_walk(root, ""))
        assert [f[0] for f in slashed] == [f[0] for f in plain]


def test_a_relative_root_is_scanned_as_the_python_walk_scans_it(tmp_path, monkeypatch):
    _tree(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    for root in ("data", "./data", "data/", "data/a/../z"):
        assert _scanned(root) == list(_walk(root, "")), root


def test_a_missing_root_or_a_file_as_root_finds_nothing(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    for root in (tmp_path / "missing", tmp_path / "file", tmp_path / "missing" / "below", ""):
        root = str(root) if root else ""
        assert _scanned(root) == [] == list(_walk(root, ""))


def test_a_link_loop_is_an_error_on_both_paths(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(OSError) as in_python:
        list(_walk(str(tmp_path), ""))
    with pytest.raises(OSError) as in_c:
        _scanned(str(tmp_path))
    assert in_c.value.errno == in_python.value.errno == errno.ELOOP


def test_folders_are_listed_in_the_order_python_sorts_their_names(tmp_path):
    """Python sorts names as strings, where an undecodable byte is U+DC80-U+DCFF: b"\\x80x"
    comes after "éx" (U+00E9), though its byte 0x80 is below é's first UTF-8 byte, 0xC3."""
    root = os.fsencode(str(tmp_path))
    for name in (b"\x80x.png", "éx.png".encode(), "\uffff.png".encode(), "😀.png".encode(),
                 b"\xed\xb2\x80.png", b"a.png"):
        with open(root + b"/" + name, "wb") as handle:
            handle.write(name)
    assert [f[0] for f in _scanned(str(tmp_path))] == [f[0] for f in _walk(str(tmp_path), "")]


def test_a_fingerprint_is_the_same_with_and_without_the_extension(tmp_path, monkeypatch):
    _tree(tmp_path)  # an undecodable name too: a manifest line holds a name's own bytes
    (tmp_path / "big.bin").write_bytes(b"b" * (fpmod.KEEP_FILE + 10))
    in_c = fingerprint(tmp_path)
    _python_only(monkeypatch)
    in_python = fingerprint(tmp_path)
    assert in_c.digest == in_python.digest and in_c.files == in_python.files
    assert in_c.contents == in_python.contents and "a/b/y.png" in in_c.contents
    assert len(in_c.files) == len(list(_walk(str(tmp_path), "")))


def test_a_listing_is_what_the_python_listing_gives(tmp_path):
    from dataset.layout import _list_under

    _tree(tmp_path)
    (tmp_path / "b" / "é folder" / "ü.png").parent.mkdir(parents=True)
    (tmp_path / "b" / "é folder" / "ü.png").write_bytes(b"x")
    for folder, prefix in ((tmp_path, "increments/b1/coat"), (tmp_path / "z", "p"),
                           (tmp_path / "missing", "q"), (tmp_path / "top.png", "r")):
        python: list[tuple[str, bool]] = []
        _list_under(str(folder), prefix, python)
        listed = native.list_files(str(folder), prefix)
        assert listed == sorted(python), folder
    listed = dict(native.list_files(str(tmp_path), "p"))
    assert listed["p/to-file"] is True and listed["p/broken"] is True and listed["p/fifo"] is False
    assert "p/to-folder" not in listed and "p/.hidden-link" not in listed
    assert listed["p/upload.tmp"] is False and listed["p/b/é folder/ü.png"] is False  # all listed


def test_files_in_more_folders_than_are_held_open_are_all_scanned_and_read(tmp_path):
    for k in range(150):  # past the folders the C code keeps open: the rest by path
        (tmp_path / f"d{k:03d}").mkdir()
        for name in ("a.png", "b.png"):
            (tmp_path / f"d{k:03d}" / name).write_bytes(f"{k}{name}".encode())
    scanned = native.scan(str(tmp_path), IGNORED_SUFFIXES)
    assert scanned == list(_walk(str(tmp_path), "")) and len(scanned) == 300
    read = native.read_files([found[1] for found in scanned], [found[2] for found in scanned])
    assert read == [Path(found[1]).read_bytes() for found in scanned]


@pytest.mark.parametrize("built", [True, False])
def test_reading_a_file_leaves_its_access_time_alone(tmp_path, monkeypatch, built):
    if not built:
        _python_only(monkeypatch)
    path = tmp_path / "new.png"
    path.write_bytes(b"png")
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns - 10**10, st.st_mtime_ns))  # read before its last write
    assert native.read_files([str(path)], [3]) == [b"png"]
    assert path.stat().st_atime_ns == st.st_mtime_ns - 10**10  # no metadata write per file


def _child(code: str, *args: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2], check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_build_from_older_sources_is_not_used():
    code = ("import sys, types\n"
            "stale = types.ModuleType('dataset._native')\n"
            "stale.ABI = int(sys.argv[1]) if sys.argv[1] else None\n"
            "sys.modules['dataset._native'] = stale\n"
            "from dataset import native\n"
            "print(native.available())\n")
    assert _child(code, "1") == "False" and _child(code, "") == "False"
    assert _child(code, str(native.ABI)) == "True"


def test_near_the_descriptor_limit_a_scan_and_its_reads_find_what_python_finds(tmp_path):
    """The C code holds folders open (to open and stat by name in them): near the limit it
    lets them go and goes on by path, as Python needs one descriptor at a time."""
    for k in range(6):
        for j in range(20):
            (tmp_path / f"a{k}" / f"b{j:02d}").mkdir(parents=True)
            (tmp_path / f"a{k}" / f"b{j:02d}" / "x.png").write_bytes(bytes([k, j]))
        (tmp_path / f"a{k}" / "zz.png").write_bytes(bytes([k]))  # after its folders, in a kept one
    (tmp_path / "zz.png").write_bytes(b"last")
    code = ("import os, resource, sys\n"
            "from dataset import fingerprint, native\n"
            "root, spare = sys.argv[1], int(sys.argv[2])\n"
            "expected = list(fingerprint._walk(root, ''))\n"
            "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir('/proc/self/fd')) + spare, hard))\n"
            "found = native.scan(root, fingerprint.IGNORED_SUFFIXES)\n"
            "assert found == expected, 'not what the Python walk finds'\n"
            "read = native.read_files([f[1] for f in found], [f[2] for f in found])\n"
            "assert read == [open(f[1], 'rb').read() for f in found], [r for r in read if type(r) is int][:3]\n"
            "print(len(found))\n")
    for spare in (4, 8, 24, 70):
        assert _child(code, str(tmp_path), str(spare)) == "127", spare


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to become another user (runs as root in CI)")
def test_files_another_user_owns_read_the_same_on_both_paths():
    """O_NOATIME is refused (EPERM) for a file we do not own: read anyway, on both paths, and
    not asked for again."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        for name in ("root.png", "own.png"):
            (folder / name).write_bytes(name.encode())
            (folder / name).chmod(0o644)
        os.chown(folder / "own.png", 65534, 65534)
        code = ("import os, sys\n"
                "from dataset import native\n"  # imported first: root's Python stays closed to us
                "os.setgid(65534); os.setuid(65534)\n"
                "paths = [os.path.join(sys.argv[1], n) for n in ('root.png', 'own.png')]\n"
                "built = native.read_files(paths, [8, 7])\n"
                "native._native = None\n"
                "print(built == native.read_files(paths, [8, 7]) == [b'root.png', b'own.png'])\n")
        assert _child(code, str(folder)) == "True"
    finally:
        shutil.rmtree(folder)


def test_a_file_over_the_c_readers_bound_is_read_whole(tmp_path):
    """The C reader takes files up to 16 MiB; a batch holding a larger one (an image nobody
    should push, that ingestion must still word a problem for) is read in Python."""
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    big.write_bytes(b"\x89PNG" + b"x" * (16 << 20))
    small.write_bytes(b"png")
    got = native.read_files([str(big), str(small)], [big.stat().st_size, 3])
    assert got == [big.read_bytes(), b"png"]
