"""Exporting holds the merged model plus about one tensor in flight: the file is written in a stream."""

from __future__ import annotations

import tracemalloc

import pytest

from tests.engine.export.conftest import make_export_adapter


@pytest.mark.parametrize("outtype", ["f16", "q4_0"])
def test_writing_the_file_needs_memory_for_about_one_tensor_beyond_the_model(outtype, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratk.engine.export import gguf_merged
    from loratk.engine.export.gguf_merged import export_gguf
    from loratk.engine.memory.measure import measure_peak_bytes
    from loratk.testing import build_tiny_model

    base = build_tiny_model(tmp_path / "deep", "llama", num_hidden_layers=16)  # many tensors, none dominant
    adapter = make_export_adapter(base, tmp_path / "adapter")

    def fresh():
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))

    model = fresh()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = max(p.numel() * 4 for p in model.parameters())
    options = {"output": tmp_path / "m.gguf", "outtype": outtype, "verify": False, "overwrite": True}
    export_gguf(model, tokenizer, options)  # the first export imports the writer's modules: not what is measured

    merged = fresh()
    torch_peak = measure_peak_bytes(lambda: export_gguf(merged, tokenizer, options))  # the merge included

    stream_peak = []

    def traced_write(*args, **kwargs):  # numpy's arrays while tensors are converted and written
        tracemalloc.start()
        try:
            gguf_merged.write_gguf.__wrapped__(*args, **kwargs)
            stream_peak.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()

    traced_write.__wrapped__ = gguf_merged.write_gguf
    monkeypatch.setattr(gguf_merged, "write_gguf", traced_write)
    export_gguf(fresh(), tokenizer, options)
    numpy_peak = stream_peak[0]
    assert (tmp_path / "m.gguf").stat().st_size > 0
    # One tensor in flight is a few arrays of its size (float32 values, llama.cpp's row order, the
    # quantizer's blocks), whatever the model's size.
    print(f"{outtype}: torch {torch_peak}, numpy {numpy_peak}, largest tensor {largest}, model {model_bytes}")
    assert torch_peak + numpy_peak < 6 * largest < model_bytes / 4, (torch_peak, numpy_peak, largest, model_bytes)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "BF16"])
def test_quantizing_a_band_of_rows_at_a_time_gives_the_reference_bytes(qtype, monkeypatch):
    import gguf
    import numpy as np

    from loratk.engine.export import gguf_model

    monkeypatch.setattr(gguf_model, "QUANTIZE_CHUNK", 200)  # 3 rows of 64 per band, the last band short
    values = np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32)
    kind = gguf.GGMLQuantizationType[qtype]
    assert np.array_equal(gguf_model.encode(values, kind), gguf.quants.quantize(values, kind))
