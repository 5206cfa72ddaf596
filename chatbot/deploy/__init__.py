"""Deploy: a model folder converted for other CPU runtimes (`chatbot-export`).

    export.py  export_model: load (repairing folders written before issue 19), refuse what a runtime
               cannot run, write the output folder whole or not at all (`export.json` marks it ours)
    ct2.py     CTranslate2: int8 or fp32 conversion, and `SamplingOptions` as its generate arguments
    ort.py     ONNX Runtime: torch.onnx export with a KV cache, int8 quantization, and a reply loop
               over the session that samples as `ChatBot` does

Entry point: `export_model(source, output, to=..., quantization=...)`. The only folder that imports
ctranslate2, onnx and onnxruntime, so the `[ct2]` and `[onnx]` extras are real boundaries.
"""
