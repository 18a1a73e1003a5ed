"""Paths judged where they resolve: confinement through symlinks, outputs that would overwrite inputs."""
from __future__ import annotations

import os

import pytest

from lis.errors import ConfigError
from lis.paths import check_output_dir, check_output_file, inside


def test_inside_follows_symlinks(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "link")
    assert inside(tmp_path / "root" / "a.png", tmp_path / "root")
    assert inside(tmp_path / "root", tmp_path / "root")
    assert not inside(tmp_path / "root" / "link" / "a.png", tmp_path / "root")
    assert not inside(tmp_path / "root" / ".." / "elsewhere", tmp_path / "root")
    assert not inside(tmp_path / "rootless", tmp_path / "root")  # a prefix is not a parent


def test_an_output_file_may_not_be_an_input_by_any_name(tmp_path):
    source = tmp_path / "log.parquet"
    source.write_bytes(b"x")
    os.symlink(source, tmp_path / "alias.parquet")
    for out in (source, tmp_path / "alias.parquet", tmp_path / "sub" / ".." / "log.parquet"):
        with pytest.raises(ConfigError, match="--out: .* is an input"):
            check_output_file(out, "--out", [source])
    check_output_file(tmp_path / "other.parquet", "--out", [source, None])


def test_an_output_file_may_not_be_a_directory_nor_inside_an_input_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ConfigError, match="existing directory"):
        check_output_file(tmp_path / "images", "--out")
    with pytest.raises(ConfigError, match="inside .*images"):
        check_output_file(tmp_path / "images" / "p.parquet", "--out", [tmp_path / "images"])


def test_an_output_folder_may_not_hold_an_input_nor_be_a_file(tmp_path):
    source = tmp_path / "raw" / "events.csv"
    source.parent.mkdir()
    source.write_text("x")
    with pytest.raises(ConfigError, match="holds .*events.csv"):
        check_output_dir(tmp_path / "raw", "--out", [source])
    with pytest.raises(ConfigError, match="holds"):
        check_output_dir(tmp_path, "--out", [source])
    with pytest.raises(ConfigError, match="existing file"):
        check_output_dir(source, "--out")
    check_output_dir(tmp_path / "raw" / "imported", "--out", [source])  # beside the input is fine
