"""Measuring tools: parameters and FLOPs (:mod:`.flops`), speed / memory / bf16 accuracy
benchmarks (:mod:`.benchmark`), and the models they measure (:mod:`.models`)."""
