"""What an HF download writes besides the shards: the Hub's other files, flat and atomically."""

from __future__ import annotations

from megaload_client._download import hub_extra_files, write_file


def test_only_top_level_files_other_than_weights_and_index_are_written():
    info = {
        "siblings": [
            {"rfilename": "config.json"},
            {"rfilename": "model-00001-of-00002.safetensors"},
            {"rfilename": "model.safetensors.index.json"},
            {"rfilename": "tokenizer.json"},
            {"rfilename": "../../outside.json"},
            {"rfilename": "sub/dir.json"},
            {"rfilename": "..\\evil"},
            {"rfilename": ".."},
            {"rfilename": ""},
            {"rfilename": 7},
            "not a sibling",
        ]
    }
    assert hub_extra_files(info) == ["config.json", "tokenizer.json"]
    assert hub_extra_files({}) == []


def test_write_file_replaces_atomically_and_leaves_no_temporary(tmp_path):
    (tmp_path / "config.json").write_text("old")
    path = write_file(tmp_path, "config.json", b'{"a": 1}\n')
    assert path.read_bytes() == b'{"a": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
