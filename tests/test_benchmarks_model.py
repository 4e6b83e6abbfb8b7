"""Smoke test of the model benchmark (deltanet.benchmarks.model) on the CPU with the debug size.

It checks that both sections run end to end and write their JSON, and the one property the decoding
section exists to show: DeltaNet's cache does not grow with the context, Transformer++'s KV cache does.
"""

from __future__ import annotations

import json

from deltanet.benchmarks import model as model_benchmark


def test_model_benchmark_runs_on_cpu_and_writes_json(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--device", "cpu", "--preset", "debug", "--shapes", "1x16",
            "--steps", "1", "--warmup", "1", "--contexts", "8", "24", "--decode-steps", "1"]  # fmt: skip
    model_benchmark.main(argv)
    result = json.loads((tmp_path / "model.json").read_text())
    assert [(row["model"], row["seq_len"]) for row in result["train"]] == [
        ("deltanet", 16),
        ("transformer++", 16),
    ]
    for row in result["train"]:
        assert row["tokens_per_s"] > 0 and row["params"] > 0 and 0 < row["loss"] < 10
    assert result["train_ratios"][0]["ours_over_transformer"] > 0
    cache = {(row["model"], row["context"]): row["cache_mib"] for row in result["decode"]}
    assert cache["deltanet", 8] == cache["deltanet", 24]
    # The KV cache holds K and V of every token: 2 * layers * heads * head_dim bf16 numbers per token.
    config = model_benchmark.preset_config("transformer++-debug")
    per_token_mib = 2 * config.num_hidden_layers * config.num_heads * config.head_dim * 2 / 2**20
    assert abs(cache["transformer++", 24] - cache["transformer++", 8] - 16 * per_token_mib) < 1e-9
    last_line = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last_line.split()[:2] == ["transformer++", "24"]  # the tables come last, decoding at the end


def test_launch_settings_apply_per_row_and_are_restored(tmp_path, monkeypatch):
    """--launch and a row's own settings ("name [KERNEL.KEY=VALUE; ...]") hold while that row runs; the
    tables are as they were afterwards; a bad setting stops the run before any row."""
    import copy

    import pytest

    from deltanet.layers.recurrent_mixer import LinearRecurrentMixer
    from deltanet.ops.triton import common, qkv_features

    before = copy.deepcopy((common.LAUNCH, qkv_features.LAUNCH))
    width_multiple = LinearRecurrentMixer.fused_width_multiple
    seen = {}
    original = model_benchmark.train_rows

    def recording_train_rows(name, *args):
        seen[name] = (common.LAUNCH["state"]["num_warps"], common.LAUNCH["wy"]["inverse"],
                      qkv_features.LAUNCH["bwd"]["dz_dtype"], LinearRecurrentMixer.fused_width_multiple)
        return original(name, *args)

    monkeypatch.setattr(model_benchmark, "train_rows", recording_train_rows)
    argv = ["--out", str(tmp_path), "--device", "cpu", "--preset", "debug", "--shapes", "1x16",
            "--steps", "1", "--warmup", "1", "--sections", "train", "--launch", "state.num_warps=8",
            "--models", "deltanet",
            "deltanet [wy.inverse=doubling; qkv_features.bwd.dz_dtype=float32; mixer.fused_width_multiple=7]"]
    model_benchmark.main(argv)
    assert seen == {
        "deltanet": (8, before[0]["wy"]["inverse"], before[1]["bwd"]["dz_dtype"], width_multiple),
        argv[-1]: (8, "doubling", "float32", 7),
    }
    assert (common.LAUNCH, qkv_features.LAUNCH) == before
    assert LinearRecurrentMixer.fused_width_multiple == width_multiple
    for bad in ("mixer.fused_width_multiple=big", "mixer.no_such_switch=1"):
        with pytest.raises(SystemExit):
            model_benchmark.main(argv[:-1] + [f"deltanet [{bad}]"])
    with pytest.raises(SystemExit):
        model_benchmark.main(argv[:-1] + ["deltanet [state.num_warps=many]"])
    with pytest.raises(SystemExit):
        model_benchmark.main(argv[:14] + ["--launch", "sate.num_warps=8"])
    assert (common.LAUNCH, qkv_features.LAUNCH) == before
