"""cxrlab.models"""
