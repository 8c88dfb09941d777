"""The MoME model core: configuration, layers, position information, embeddings, heads and the VLMo module."""
