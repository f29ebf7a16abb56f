"""artlens.embed"""
