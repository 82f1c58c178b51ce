"""benchmarks/generation.py runs end to end in its quick mode, writes every number and resumes from its cache."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import benchmark_module

pytest.importorskip("pythae", reason="the generation benchmark compares with pythae: pip install -e '.[bench]'")


@pytest.mark.slow
def test_generation_quick_writes_every_row_and_grid_and_resumes(fashion_mnist, tmp_path, capsys):
    with benchmark_module("generation") as bench:
        out, images = tmp_path / "generation.json", tmp_path / "images"
        args = ["--quick", "--work-dir", str(tmp_path / "runs"), "--images-dir", str(images), "--json", str(out)]
        assert bench.main(args) == 0
        table = capsys.readouterr().out
        summary = json.loads(out.read_text())
        assert summary["benchmark"] == "generation" and summary["mode"] == "quick"
        assert {"cpu", "cores", "torch"} <= set(summary["machine"]) and summary["pythae"]
        assert summary["settings"]["epochs"] == 1 and summary["settings"]["num_samples"] == 500
        rows = summary["results"]
        assert set(rows) == {name for name, *_ in bench.ROWS} and not summary["skipped"]
        for name, row in rows.items():
            assert row["num_samples"] == 500 and row["num_test"] == 500, name
            assert row["fd"] >= 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1, name
            assert row["train_seconds"] > 0 and row["description"] in table, name
            assert (row.get("sampler_fit_seconds", 0) > 0) == row["sampler"].startswith("gmm"), name
            grid = Image.open(images / f"generation_{name}.png")
            assert grid.size[0] > 8 * 28  # 8 columns of 28-pixel images
        # rows sharing a model share its training
        assert rows["vaekit_prior"]["train_seconds"] == rows["vaekit_gmm"]["train_seconds"]
        assert rows["pythae_normal"]["train_seconds"] == rows["pythae_gmm"]["train_seconds"]
        conditional = {name for name, row in rows.items() if "classes" in row}
        assert conditional == {"vaekit_conditional", "vaekit_conditional_gmm", "vaekit_conditional_shared_gmm",
                               "vaekit_conv_conditional", "vaekit_conv_conditional_gmm",
                               "vaekit_conv_conditional_gmm_draw"}
        for name in conditional:
            assert 0 <= rows[name]["conditional_accuracy"] <= 1, name
        assert rows["vaekit_gmm_draw"]["train_seconds"] == rows["vaekit_gmm"]["train_seconds"]  # the same model
        assert rows["vaekit_gmm_draw"]["fd"] != rows["vaekit_gmm"]["fd"]  # fitted on other codes
        for name in ("vaekit_conditional_gmm", "vaekit_conv_conditional_gmm", "vaekit_conv_conditional_gmm_draw"):
            per_label = rows[name]["components_per_label"]
            assert set(per_label) == set(rows[name]["classes"]) and sum(per_label.values()) == rows[name]["components"]
        assert "components_per_label" not in rows["vaekit_conditional_shared_gmm"]
        assert "training images (the floor)" in table
        # a second run takes every finished row from the cache
        assert bench.main(args) == 0
        assert capsys.readouterr().err.count("cached") == len(rows)
        assert json.loads(out.read_text())["results"] == rows
