"""artlens.retrieval"""
