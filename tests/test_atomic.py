"""mmt_core.atomic: a write replaces the file whole and leaves no temporary behind."""
import json

from mmt_core.atomic import write_json, write_text


def test_write_json_replaces_whole_file_without_leftovers(tmp_path):
    path = tmp_path / "index.json"
    write_text(path, "x" * 10_000)  # a longer old file: nothing of it may survive
    write_json(path, {"clips": [1, 2]}, indent=1)
    assert json.loads(path.read_text()) == {"clips": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]
