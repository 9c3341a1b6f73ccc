"""Global shuffle: permutation of the input lines, seeded, bounded buckets, CLI errors."""

from collections import Counter

import pytest

from t5pegasus.cli import main
from t5pegasus.errors import UserError
from t5pegasus.pretrain import shuffle as sh


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(sh, "OVERHEAD", 1 << 10)
    monkeypatch.setattr(sh, "BLOCK", 1 << 12)
    monkeypatch.setattr(sh, "CHUNK", 1 << 11)


def test_shuffle_is_a_permutation(tmp_path, small_budget):
    lines = [f"第{i}行 line {i} " * (i % 7 + 1) for i in range(20000)]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines + ["dup", "dup"]), encoding="utf-8")  # no final newline
    stats = sh.shuffle_file(src, tmp_path / "out.txt", 1 << 16, seed=1)
    out = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    assert out[-1] == "" and Counter(out[:-1]) == Counter(lines + ["dup", "dup"])
    assert stats.lines == 20002 and stats.buckets > 10
    assert out[:-1] != lines
    sh.shuffle_file(src, tmp_path / "again.txt", 1 << 16, seed=1)
    assert (tmp_path / "again.txt").read_text(encoding="utf-8").split("\n") == out
    sh.shuffle_file(src, tmp_path / "other.txt", 1 << 16, seed=2)
    assert (tmp_path / "other.txt").read_text(encoding="utf-8").split("\n") != out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # buckets cleaned up


def test_positions_are_uniform(tmp_path, small_budget):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"{i}\n" for i in range(10)))
    first = Counter()
    for seed in range(600):
        sh.shuffle_file(src, tmp_path / "o.txt", 1 << 12, seed=seed)
        first[(tmp_path / "o.txt").read_text().split("\n")[0]] += 1
    assert all(30 < first[str(i)] < 90 for i in range(10))  # expected 60 each


def test_parse_size_and_cli_errors(tmp_path, capsys):
    assert sh.parse_size("256M") == 256 << 20 and sh.parse_size("1.5G") == 3 << 29 and sh.parse_size("4096") == 4096
    with pytest.raises(UserError):
        sh.parse_size("lots")
    src = tmp_path / "in.txt"
    src.write_text("a\nb\nc\n")
    assert main(["shuffle", str(src), "-o", str(tmp_path / "o.txt"), "--memory", "1K"]) == 2
    assert main(["shuffle", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o.txt")]) == 2
    assert main(["shuffle", str(src), "-o", str(tmp_path / "o.txt")]) == 0
    assert sorted((tmp_path / "o.txt").read_text().split()) == ["a", "b", "c"]
    assert "Traceback" not in capsys.readouterr().err
