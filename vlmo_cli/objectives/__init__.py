"""Training objectives with the official semantics: ITC (+ VL branch), ITM with global hard
negatives, MLM, masked-image modelling, VQA and NLVR2 classification."""
