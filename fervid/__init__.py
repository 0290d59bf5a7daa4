"""fervid"""
