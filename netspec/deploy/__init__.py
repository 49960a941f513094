"""Shipping a trained net: the deploy graph, ONNX export with a parity check, serving, prediction."""
