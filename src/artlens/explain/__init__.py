"""artlens.explain"""
