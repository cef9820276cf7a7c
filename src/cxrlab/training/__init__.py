"""cxrlab.training"""
