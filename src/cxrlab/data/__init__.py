"""cxrlab.data"""
