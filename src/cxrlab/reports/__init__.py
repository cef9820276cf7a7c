"""cxrlab.reports"""
