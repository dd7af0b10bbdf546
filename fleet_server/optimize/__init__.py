"""Model optimization: quantized variants of a float model, measured and reported."""
