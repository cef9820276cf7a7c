"""cxrlab.evaluation"""
