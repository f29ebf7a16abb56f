"""artlens.serve"""
