"""Using a trained model outside training: embedding files (:mod:`.embed`), folder and caption search with an ANN
index (:mod:`.search`, :mod:`.ann`) and export to safetensors / ONNX with a model card (:mod:`.export`).

Submodules are imported on use, so importing this package stays cheap (no torch).
"""
