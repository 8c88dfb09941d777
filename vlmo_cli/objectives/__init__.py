"""Training objectives with the official semantics (reference §8): ITC (+ VL branch), ITM with global hard
negatives, MLM, masked-image modelling, VQA and NLVR2 classification."""
